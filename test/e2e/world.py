"""Glue for one scenario: a running ProsodyEnv plus the clients of a test.

    def test_something(prosody):
        async def scenario(w):
            bob = await w.connect("bob", "desk")
            ...
        run(prosody, scenario)

run() gives the scenario its own event loop and an overall timeout, closes
every client afterwards, and on failure prints what each client received
(pytest shows it under "Captured stdout call").
"""

import asyncio
import time

from .clients import Client, QUIET_WINDOW

# Demo/test accounts (user -> password), on both VirtualHosts: defined with
# the harness, which the demo (run_server.py) uses without the clients.
from .prosody_env import USERS, SLOWDOWN  # noqa: E402

# a whole scenario's upper bound (longer under valgrind, see prosody_env)
SCENARIO_TIMEOUT = 90.0 * SLOWDOWN

# Where World.connect() puts a user unless told otherwise: alice is the
# account under test; bob and carol observe from the host without the
# module, so that what they see is exactly what the room sends.
DEFAULT_HOST = {"alice": "localhost", "bob": "plain.localhost", "carol": "plain.localhost"}


class World:
    def __init__(self, env):
        self.env = env
        self.clients = []

    def room(self, name):
        return "%s@%s" % (name, self.env.muc_domain)

    def occupant(self, room, nick):
        return "%s/%s" % (room, nick)

    def host(self, user):
        return DEFAULT_HOST.get(user, self.env.domain)

    def jid(self, user, res=None, host=None):
        j = "%s@%s" % (user, host or self.host(user))
        return j + "/" + res if res else j

    async def connect(self, user, res, host=None, **kw):
        """A connected session user@host/res (initial presence sent); host
        defaults to DEFAULT_HOST[user].  Keywords go to Client.connect()."""
        host = host or self.host(user)
        c = Client(self.jid(user, res, host), self.env.users[(user, host)], self.env.port,
                   name="%s@%s/%s" % (user, host.split(".")[0], res))
        self.clients.append(c)
        await c.connect(**kw)
        return c

    async def quiet(self, window=QUIET_WINDOW):
        await asyncio.sleep(window)

    async def close(self):
        for c in self.clients:
            try:
                await c.abort(timeout=2)
            except Exception:  # pragma: no cover - best effort
                pass

    def transcripts(self):
        return "\n\n".join(c.transcript() for c in self.clients)


async def next_second(t=None):
    """Wait until the wall clock is in a whole second after the one of t
    (default: now).  Stamps in whole seconds (Prosody 0.12's MUC history,
    a `since` without fractions) then tell apart what came before t from
    what comes now: a wait for the clock, not for a guessed time."""
    target = int(time.time() if t is None else t) + 1
    while time.time() < target:
        await asyncio.sleep(target - time.time())


def run(env, scenario, timeout=SCENARIO_TIMEOUT, world=None):
    """Run `await scenario(world)` in a fresh event loop; on failure print
    every client's transcript.  world: the World class to make (World)."""
    async def main():
        w = (world or World)(env)
        try:
            await asyncio.wait_for(scenario(w), timeout)
        except BaseException:
            print("==== client transcripts ====")
            print(w.transcripts())
            raise
        finally:
            await w.close()
    asyncio.run(main())
