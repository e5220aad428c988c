#!/bin/sh
# Unpack Prosody 13.0 from Debian's <codename>-backports into <checkout>/.prosody13,
# beside the system's Prosody 0.12, which stays as it is.  The test suites
# run against both (MINIMIX_PROSODY=13 picks this one, test/e2e/README.md).
#
#   .prosody13/apt/    a private apt sources list and package lists
#   .prosody13/root/   the package, unpacked (dpkg-deb -x)
#   .prosody13/bin/    prosody and prosodyctl, pointing at root/
#
# The mirror is the one the system's apt already uses for its release
# (/etc/apt/sources.list.d/*.sources or sources.list); nothing is installed
# system-wide but the package's run-time dependencies that are missing,
# from the system's own suites.  Safe to run again: does nothing when the
# tree is there (the wrappers are rewritten, the checkout may have moved).
# PROSODY13_VERSION picks another Debian version of the package.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR="$ROOT/.prosody13"
WANT=${PROSODY13_VERSION:-13.0.1-1~bpo12+1}

# shellcheck disable=SC1091
CODENAME=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
[ -n "$CODENAME" ] || CODENAME=bookworm
SUITE="$CODENAME-backports"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# The wrappers: the package's own scripts with the CFG_* paths at the top
# set to the unpacked tree (Prosody's ./configure writes them the same way).
write_wrappers() {
	mkdir -p "$DIR/bin" "$DIR/root/var/lib/prosody"
	for f in prosody prosodyctl; do
		sed -e "s|^CFG_SOURCEDIR=.*|CFG_SOURCEDIR='$DIR/root/usr/lib/prosody';|" \
			-e "s|^CFG_CONFIGDIR=.*|CFG_CONFIGDIR='$DIR/root/etc/prosody';|" \
			-e "s|^CFG_PLUGINDIR=.*|CFG_PLUGINDIR='$DIR/root/usr/lib/prosody/modules/';|" \
			-e "s|^CFG_DATADIR=.*|CFG_DATADIR='$DIR/root/var/lib/prosody';|" \
			"$DIR/root/usr/bin/$f" >"$DIR/bin/$f.tmp"
		grep -q "^CFG_SOURCEDIR='$DIR/root/usr/lib/prosody';" "$DIR/bin/$f.tmp" || {
			echo "prosody13: $f has no CFG_SOURCEDIR line to point at the tree" >&2
			exit 1
		}
		chmod 755 "$DIR/bin/$f.tmp"
		mv "$DIR/bin/$f.tmp" "$DIR/bin/$f"
	done
}

if [ -f "$DIR/root/usr/lib/prosody/prosody.version" ] && [ -f "$DIR/root/usr/bin/prosodyctl" ]; then
	write_wrappers
	exit 0
fi

# The URIs (and keyring) of the system's entry for $CODENAME itself, from
# deb822 .sources files or one-line .list files.
mirror() {
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk -v want="$CODENAME" '
			function flush() {
				if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " want " ") && uris != "")
					{ print uris "\t" key; found = 1; exit }
				types = ""; suites = ""; uris = ""; key = ""
			}
			/^[ \t]*$/ { flush(); next }
			/^#/ { next }
			{
				field = tolower($1); sub(/:$/, "", field)
				val = $0; sub(/^[^:]*:[ \t]*/, "", val)
				if (field == "types") types = val
				else if (field == "suites") suites = val
				else if (field == "uris") uris = val
				else if (field == "signed-by") key = val
			}
			END { if (!found) flush() }' "$f"
	done | head -n 1 | grep . && return 0
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		# deb [options] URI suite components...
		awk -v want="$CODENAME" '
			$1 == "deb" {
				i = 2; opts = ""
				if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) { opts = opts " " $i; i++ } opts = opts " " $i; i++ }
				key = ""
				if (match(opts, /signed-by=[^] ]*/)) key = substr(opts, RSTART + 10, RLENGTH - 10)
				if ($(i + 1) == want) { print $i "\t" key; exit }
			}' "$f"
	done | head -n 1 | grep .
}

found=$(mirror) || {
	echo "prosody13: no apt source for '$CODENAME' in /etc/apt; cannot fetch prosody from $SUITE" >&2
	exit 1
}
uris=$(printf '%s' "$found" | cut -f1)
key=$(printf '%s' "$found" | cut -f2)

rm -rf "$DIR/apt" "$DIR/root.tmp"
mkdir -p "$DIR/apt/lists/partial" "$DIR/apt/cache/archives/partial" "$DIR/apt/deb"
{
	echo "Types: deb"
	echo "URIs: $uris"
	echo "Suites: $SUITE"
	echo "Components: main"
	[ -z "$key" ] || echo "Signed-By: $key"
} >"$DIR/apt/backports.sources"

# apt with only that list, its own package lists and cache: the system's
# apt state is not touched, and no root is needed.
APT_OPTS="-o Dir::Etc::sourcelist=$DIR/apt/backports.sources -o Dir::Etc::sourceparts=-
 -o Dir::State::Lists=$DIR/apt/lists -o Dir::Cache=$DIR/apt/cache
 -o Debug::NoLocking=1 -o APT::Sandbox::User=$(id -un)"
echo "prosody13: fetching the package lists of $SUITE from $uris"
# shellcheck disable=SC2086
apt-get -qq $APT_OPTS update
cd "$DIR/apt/deb"
# shellcheck disable=SC2086
if ! apt-get -qq $APT_OPTS download "prosody=$WANT" 2>/dev/null; then
	echo "prosody13: prosody $WANT is not in $SUITE any more; taking the one it has" >&2
	# shellcheck disable=SC2086
	apt-get -qq $APT_OPTS download "prosody/$SUITE"
fi
deb=$(ls "$DIR"/apt/deb/prosody_*.deb)
version=$(dpkg-deb -f "$deb" Version)
case "$version" in
13.*) ;;
*) echo "prosody13: $SUITE has prosody $version, not 13.x" >&2; exit 1 ;;
esac

# Its run-time dependencies (the same as 0.12's on Debian 12), from the
# system's suites, when missing.
# Some are virtual (lua5.4-socket is provided by lua-socket): an installed
# package or anything an installed package provides counts.
have=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}, ${Provides}\n' 2>/dev/null |
	awk '$1 == "ii" { $1 = ""; print }' | tr ',' '\n' | sed -e 's/(.*)//' -e 's/:.*//' -e 's/[[:space:]]//g')
missing=""
for p in $(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/[[:space:]]//g'); do
	[ -n "$p" ] || continue
	printf '%s\n' "$have" | grep -qxF "$p" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "prosody13: installing its dependencies:$missing"
	$SUDO apt-get update -qq
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

dpkg-deb -x "$deb" "$DIR/root.tmp"
rm -rf "$DIR/root"
mv "$DIR/root.tmp" "$DIR/root"
write_wrappers
echo "prosody13: Prosody $(cat "$DIR/root/usr/lib/prosody/prosody.version") (Debian $version) in $DIR"
