#!/usr/bin/python3
"""Run a local Prosody with mod_minimix from this checkout (`make run`).

Listens for clients on 127.0.0.1 (port 5222, or $MINIMIX_PORT, or --port),
without TLS; MUC service conference.localhost; demo accounts alice, bob and
carol on localhost (mod_minimix) and on plain.localhost (no module), with
the passwords printed at start.  New rooms are usable at once (Prosody's
muc_room_locking is off: no configuration form to submit first).
Configuration, data and log live in <checkout>/.run/ and survive restarts.
Runs in the foreground until Ctrl-C.

    make run                        # or: /usr/bin/python3 test/e2e/run_server.py
    MINIMIX_PORT=5299 make run
    MINIMIX_PROSODY=13 make run     # on Prosody 13.0 (tools/prosody13.sh)
    /usr/bin/python3 test/e2e/run_server.py --plain    # plain MUC, no module
    /usr/bin/python3 test/e2e/run_server.py --debug    # debug log
    /usr/bin/python3 test/e2e/run_server.py --no-room-archive   # rooms without muc_mam
    MINIMIX_ROOM_ARCHIVE=0 make run  # the same

The accounts' host loads what a Prosody operator's default configuration
has and clients rely on: mod_pep, mod_bookmarks, mod_private and mod_mam;
the MUC component loads muc_mam (rooms archive unless their owner turns it
off, and then the module answers MAM queries from its room log).
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

# The harness alone (no XMPP client library): the demo needs only Prosody.
from e2e.prosody_env import ProsodyEnv, CHECKOUT, PROSODY, PROSODY_VERSION, USERS  # noqa: E402


# Besides the harness's own (roster, saslauth, disco, carbons, smacks, ping).
DEMO_MODULES = ["pep", "bookmarks", "private", "mam"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=int(os.environ.get("MINIMIX_PORT") or 5222),
                    help="c2s port on 127.0.0.1 (default $MINIMIX_PORT or 5222)")
    ap.add_argument("--dir", default=os.path.join(CHECKOUT, ".run"),
                    help="config, data and log directory (default <checkout>/.run)")
    ap.add_argument("--plain", action="store_true", help="do not load mod_minimix")
    ap.add_argument("--debug", action="store_true",
                    default=os.environ.get("MINIMIX_E2E_DEBUG", "") not in ("", "0"),
                    help="log at debug level")
    ap.add_argument("--no-room-archive", action="store_true",
                    default=os.environ.get("MINIMIX_ROOM_ARCHIVE", "") in ("0", "no", "false"),
                    help="do not load muc_mam: rooms keep no archive of their own "
                         "(default with MINIMIX_ROOM_ARCHIVE=0)")
    ap.add_argument("--hibernation", type=int, default=None, metavar="SECONDS",
                    help="smacks_hibernation_time (Prosody's default: 600)")
    args = ap.parse_args(argv)

    if not args.plain:
        missing = [f for f in ("mod_minimix.lua", "minimix.so")
                   if not os.path.exists(os.path.join(CHECKOUT, f))]
        if missing:
            sys.exit("run_server: %s missing in %s; run 'make' first (or use --plain)"
                     % (", ".join(missing), CHECKOUT))

    # Rooms are open as soon as they are made: Prosody otherwise locks a new
    # room until its owner submits the configuration form (XEP-0045 10.1),
    # which a first-time user's client may not offer.
    # What a Prosody operator's default configuration has and clients rely
    # on: XEP-0402/0048 bookmarks (Gajim uses XEP-0402 only when the server
    # offers compat-pep, which mod_bookmarks does), private storage, the
    # account's archive, and the rooms' archives (muc_mam; --no-room-archive
    # leaves it out, so that MAM queries to rooms are answered from the
    # module's room log).
    muc = {"muc_room_locking": False}
    if not args.no_room_archive:
        muc["modules_enabled"] = ["muc_mam"]
    env = ProsodyEnv(minimix=not args.plain, port=args.port, workdir=args.dir,
                     debug=args.debug, console_log=True,
                     smacks_hibernation_time=args.hibernation,
                     extra_modules=DEMO_MODULES, muc_options=muc)
    for user, password in USERS.items():
        env.add_user(user, password, env.domain)
        env.add_user(user, password, env.plain_domain)

    print("Prosody %s (%s) %s mod_minimix from %s" % (
        "0.12" if PROSODY_VERSION == 12 else PROSODY_VERSION, PROSODY,
        "WITHOUT" if args.plain else "with", CHECKOUT))
    print("  clients:   127.0.0.1:%d  (no TLS: allow plaintext authentication)" % env.port)
    print("  accounts:  " + ", ".join("%s@%s / %s" % (u, env.domain, p)
                                      for u, p in USERS.items()))
    print("             (the same on %s, a host without the module)" % env.plain_domain)
    print("  MUC:       %s  (any room, e.g. test@%s; new rooms are open at once)"
          % (env.muc_domain, env.muc_domain))
    print("  modules:   %s; %s on the MUC" % (", ".join(DEMO_MODULES),
                                             "no archive" if args.no_room_archive else "muc_mam"))
    print("  config:    %s" % env.config_path)
    print("  log:       %s" % env.log_path)
    print("Ctrl-C to stop.", flush=True)
    # Prosody itself handles SIGINT/SIGTERM (a clean shutdown).
    os.chdir(env.dir)
    os.execve(env.command()[0], env.command(), env.environ())


if __name__ == "__main__":
    main()
