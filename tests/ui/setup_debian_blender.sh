#!/bin/sh
# Debian 12's Blender (3.4) and Xvfb without root, for the UI smoke test tests/test_ui_window.py.
# See docs/blender.md, "A real window".
#
#   sh tests/ui/setup_debian_blender.sh [DIR]
#   export PARTSTYLE_BLENDER_34=DIR/blender-ui
#   python -m pytest tests/test_ui_window.py
#
# DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/partstyle/debian-blender (about 1 GB once extracted).
# Needs a Debian 12 (bookworm) or similar system with current apt lists (no root: nothing is installed):
#
# 1. the packages blender, xvfb and python3-numpy need, minus those already installed, are
#    downloaded with `apt-get download` into DIR/debs (already downloaded ones are kept) and
#    extracted with `dpkg-deb -x` into DIR/root;
# 2. Xvfb runs the keymap compiler as /usr/bin/xkbcomp (the folder is compiled in, there is no
#    option). Without a system xkbcomp, DIR/Xvfb is a copy whose "/usr/bin" string is replaced by
#    the same-length /tmp/xbb, and /tmp/xbb/xkbcomp links to the extracted one (the launcher
#    re-creates the link when /tmp was cleaned);
# 3. DIR/blender-ui is written: it sets the library, script and Python paths, starts a private
#    Xvfb (display chosen by Xvfb), runs DIR/root/usr/bin/blender with its arguments, stops Xvfb
#    and exits with Blender's status.
set -eu

DIR=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/partstyle/debian-blender}
XKB_LINK_DIR=/tmp/xbb  # exactly as long as /usr/bin: it replaces that string inside Xvfb

for tool in apt-get apt-cache dpkg-deb dpkg-query python3; do
    command -v "$tool" >/dev/null || { echo "setup: '$tool' is missing (a Debian-like system is needed)" >&2; exit 1; }
done
apt-cache show blender >/dev/null 2>&1 || {
    echo "setup: apt knows no 'blender' package; run 'apt-get update' (as root) or use a Debian 12 system" >&2; exit 1; }

mkdir -p "$DIR/debs" "$DIR/root"
DIR=$(cd "$DIR" && pwd)
cd "$DIR/debs"

# 1. What is not installed yet, downloaded once, extracted.
apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
    --no-enhances blender xvfb python3-numpy 2>/dev/null | grep -v '^ ' | grep -v '^<' | sort -u > ../wanted.txt
dpkg-query -W -f='${Package}\n' | sort -u > ../installed.txt
comm -23 ../wanted.txt ../installed.txt > ../needed.txt
missing=""
for package in $(cat ../needed.txt); do
    ls "${package}"_*.deb >/dev/null 2>&1 || missing="$missing $package"
done
if [ -n "$missing" ]; then
    echo "setup: downloading $(echo $missing | wc -w) packages into $DIR/debs"
    apt-get download $missing
fi
echo "setup: extracting $(ls *.deb | wc -l) packages into $DIR/root"
for deb in *.deb; do
    dpkg-deb -x "$deb" ../root
done
cd "$DIR"
R=$DIR/root
[ -x "$R/usr/bin/blender" ] || { echo "setup: $R/usr/bin/blender is missing after extraction" >&2; exit 1; }

# 2. Xvfb: the system's, else the extracted one (patched when there is no /usr/bin/xkbcomp).
LINK_XKBCOMP=""
if command -v Xvfb >/dev/null; then
    XVFB=$(command -v Xvfb)
elif [ -x /usr/bin/xkbcomp ]; then
    XVFB=$R/usr/bin/Xvfb
else
    XVFB=$DIR/Xvfb
    python3 - "$R/usr/bin/Xvfb" "$XVFB" "$XKB_LINK_DIR" <<'EOF'
import sys
source, target, folder = sys.argv[1:]
data = open(source, "rb").read()
old, new = b"/usr/bin\0", folder.encode() + b"\0"
assert len(old) == len(new) and data.count(old) == 1, "Xvfb: expected one '/usr/bin' string (xkbcomp's folder)"
open(target, "wb").write(data.replace(old, new))
EOF
    chmod +x "$XVFB"
    LINK_XKBCOMP="mkdir -p $XKB_LINK_DIR && ln -sf \$R/usr/bin/xkbcomp $XKB_LINK_DIR/xkbcomp  # the patched Xvfb runs $XKB_LINK_DIR/xkbcomp"
fi
XKBDIR=""
[ -d /usr/share/X11/xkb ] || XKBDIR="-xkbdir $R/usr/share/X11/xkb"

# 3. The launcher.
cat > "$DIR/blender-ui" <<EOF
#!/bin/sh
# Blender $(dpkg-deb -f "$(ls debs/blender_*.deb 2>/dev/null | head -n 1)" Version 2>/dev/null || echo 3.4) from $R in a private Xvfb;
# the arguments go to Blender. Written by tests/ui/setup_debian_blender.sh.
# PARTSTYLE_UI_SCREEN: the Xvfb screen (default 1600x1000x24).
R=$R
export LD_LIBRARY_PATH=\$R/usr/lib/x86_64-linux-gnu:\$R/lib/x86_64-linux-gnu:\$R/usr/lib/x86_64-linux-gnu/blas:\$R/usr/lib/x86_64-linux-gnu/lapack:\$R/usr/lib/x86_64-linux-gnu/pulseaudio:\$R/usr/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
# /usr/bin early: Blender's sys.executable is the first python3.x on PATH (not, say, a pyenv shim).
export PATH=\$R/usr/bin:/usr/bin:/bin:\$PATH
export BLENDER_SYSTEM_SCRIPTS=\$R/usr/share/blender/scripts
export BLENDER_SYSTEM_DATAFILES=\$R/usr/share/blender/datafiles
export PYTHONPATH=\$R/usr/lib/python3/dist-packages
# Mesa's drivers, when they were extracted (the system had none): software OpenGL (llvmpipe).
[ -d \$R/usr/lib/x86_64-linux-gnu/dri ] && export LIBGL_DRIVERS_PATH=\$R/usr/lib/x86_64-linux-gnu/dri
$LINK_XKBCOMP
log=\$(mktemp); displayfile=\$(mktemp)
"$XVFB" -displayfd 3 -screen 0 \${PARTSTYLE_UI_SCREEN:-1600x1000x24} -nolisten tcp $XKBDIR 3>"\$displayfile" 2>"\$log" &
xvfb=\$!
for _ in \$(seq 50); do [ -s "\$displayfile" ] && break; sleep 0.1; done
if [ ! -s "\$displayfile" ]; then
    echo "blender-ui: Xvfb did not start:" >&2; cat "\$log" >&2; kill \$xvfb 2>/dev/null; exit 3
fi
DISPLAY=:\$(cat "\$displayfile") "\$R/usr/bin/blender" "\$@"
status=\$?
kill \$xvfb 2>/dev/null; wait \$xvfb 2>/dev/null
rm -f "\$log" "\$displayfile"
exit \$status
EOF
chmod +x "$DIR/blender-ui"
echo "setup: ready. export PARTSTYLE_BLENDER_34=$DIR/blender-ui"
