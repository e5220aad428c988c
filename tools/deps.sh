#!/bin/sh
# Install the Debian packages mod_minimix needs to build, test and run,
# when they are missing.  Safe to run again; does nothing when all are there.
set -eu

PACKAGES="
gcc
make
pkg-config
lua5.4
liblua5.4-dev
libicu-dev
libxxhash-dev
check
valgrind
prosody
lua-unbound
lua-busted
python3
python3-slixmpp
python3-pytest
luarocks
clang
libclang-rt-14-dev
lua-dbi-sqlite3
lua-dbi-postgresql
postgresql
"

missing=""
for p in $PACKAGES; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0

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
