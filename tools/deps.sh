#!/bin/sh
# Install the Debian packages mod_minimix needs, when they are missing.
# Safe to run again; does nothing when all are there.
#
#   sh tools/deps.sh run    what running needs (make run): the build tools,
#                           Lua, the libraries the module links, Prosody 0.12
#   sh tools/deps.sh run13  the same, and Prosody 13.0 (MINIMIX_PROSODY=13 make run)
#   sh tools/deps.sh        everything the test suites need (make check), Prosody
#                           13.0 from backports included (tools/prosody13.sh)
#                           (prosody-modules: mod_cloud_notify for the push tests on 0.12)
set -eu

MODE=${1:-all}

RUN_PACKAGES="
gcc
make
pkg-config
lua5.4
liblua5.4-dev
libicu-dev
libxxhash-dev
prosody
lua-unbound
python3
"

TEST_PACKAGES="
check
valgrind
lua-busted
python3-slixmpp
python3-pytest
python3-pytest-xdist
luarocks
clang
libclang-rt-14-dev
lua-dbi-sqlite3
lua-dbi-postgresql
postgresql
prosody-modules
"

case "$MODE" in
run|run13) PACKAGES=$RUN_PACKAGES ;;
all) PACKAGES="$RUN_PACKAGES $TEST_PACKAGES" ;;
*) echo "usage: sh tools/deps.sh [run|run13|all]" >&2; exit 2 ;;
esac

missing=""
for p in $PACKAGES; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done

if [ -n "$missing" ]; then
	echo "Installing missing packages:$missing"
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO="sudo"
	# Debian's prosody package would start a system server on 5222; the tests
	# start their own, so keep the packaged one from starting.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
		$SUDO chmod +x /usr/sbin/policy-rc.d
		trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	$SUDO apt-get update -qq
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

# Prosody 13.0, unpacked beside the system's 0.12 (never installed over it).
case "$MODE" in
run13|all) sh "$(dirname "$0")/prosody13.sh" ;;
esac
