#!/usr/bin/env bash
# Install soca-appliance on a Raspberry Pi (Raspberry Pi OS / Debian 12) as a boot service.
#
# Idempotent: run it again to upgrade; it never overwrites the config and keeps the key
# unless a new one is given. Non-interactive unless stdin is a terminal and no key is known.
# Run ./install.sh --help for the options.
set -euo pipefail

PROG=install.sh
SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
APP=soca-appliance

PREFIX=/opt/soca-appliance
ETC=/etc/soca-appliance
UNIT_DIR=/etc/systemd/system
BIN_DIR=/usr/local/bin
SERVICE_USER=soca
PYTHON=python3
PIP_ARGS=""
KEY_FILE=""
DO_APT=1
DO_USER=1
DO_SERVICE=1
SYSTEM_SITE=0
UNINSTALL=0
PURGE=0

APT_PACKAGES=(python3-venv python3-dev gcc portaudio19-dev libportaudio2 alsa-utils)
SERVICE_GROUPS=(audio gpio)
# Paths as they are written in etc/soca-appliance.service and etc/config.example.toml.
DEFAULT_PREFIX=/opt/soca-appliance
DEFAULT_ETC=/etc/soca-appliance

usage() {
    cat <<EOF
Usage: ./install.sh [OPTIONS]

Install soca-appliance: system packages, the '$SERVICE_USER' user, a virtualenv with the
project, the config and key under $ETC, and the boot service. Safe to run again (upgrade).

Options:
  --key-file FILE        read the private key from FILE (or set SOCA_PRIVATE_KEY in the
                         environment; the key is asked for only when stdin is a terminal)
  --prefix DIR           virtualenv location (default $PREFIX)
  --etc DIR              config and key directory (default $ETC)
  --unit-dir DIR         where the systemd unit goes (default $UNIT_DIR)
  --bin-dir DIR          where soca-diag and soca-appliance are linked (default $BIN_DIR;
                         '' for none)
  --python PATH          Python 3.11+ used to create the virtualenv (default $PYTHON)
  --pip-args "ARGS"      extra arguments for pip install (e.g. "--no-deps --no-build-isolation",
                         "--find-links DIR --no-index" to reuse a wheel cache)
  --system-site-packages give the virtualenv access to the system's site-packages
  --no-apt               do not install system packages with apt-get
  --no-user              do not create the '$SERVICE_USER' user; run as the current user
  --no-service           do not install or enable the systemd unit
  --uninstall            remove the unit, links, virtualenv and user; keep config and key
  --purge                with --uninstall: also delete the config and the key
  -h, --help             this text

The key is never accepted on the command line (it would show in 'ps' and shell history).
EOF
}

step() { printf '==> %s\n' "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

need_value() {
    [ "$#" -ge 2 ] || die "$1 needs a value (see --help)"
}

parse_args() {
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --prefix) need_value "$@"; PREFIX=$2; shift 2 ;;
            --prefix=*) PREFIX=${1#*=}; shift ;;
            --etc) need_value "$@"; ETC=$2; shift 2 ;;
            --etc=*) ETC=${1#*=}; shift ;;
            --unit-dir) need_value "$@"; UNIT_DIR=$2; shift 2 ;;
            --unit-dir=*) UNIT_DIR=${1#*=}; shift ;;
            --bin-dir) need_value "$@"; BIN_DIR=$2; shift 2 ;;
            --bin-dir=*) BIN_DIR=${1#*=}; shift ;;
            --python) need_value "$@"; PYTHON=$2; shift 2 ;;
            --python=*) PYTHON=${1#*=}; shift ;;
            --pip-args) need_value "$@"; PIP_ARGS=$2; shift 2 ;;
            --pip-args=*) PIP_ARGS=${1#*=}; shift ;;
            --key-file) need_value "$@"; KEY_FILE=$2; shift 2 ;;
            --key-file=*) KEY_FILE=${1#*=}; shift ;;
            --key|--key=*|--private-key|--private-key=*)
                die "the key is not accepted on the command line; use --key-file FILE or SOCA_PRIVATE_KEY" ;;
            --system-site-packages) SYSTEM_SITE=1; shift ;;
            --no-apt) DO_APT=0; shift ;;
            --no-user) DO_USER=0; shift ;;
            --no-service) DO_SERVICE=0; shift ;;
            --uninstall) UNINSTALL=1; shift ;;
            --purge) PURGE=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown option '$1' (see --help)" ;;
        esac
    done
    [ "$PURGE" -eq 0 ] || [ "$UNINSTALL" -eq 1 ] || die "--purge only goes with --uninstall"
    for dir in "$PREFIX" "$ETC" "$UNIT_DIR"; do
        case "$dir" in
            /*) ;;
            *) die "paths must be absolute: '$dir'" ;;
        esac
        [ "$dir" != / ] || die "refusing to use / as an install directory"
    done
    case "$PREFIX$ETC$UNIT_DIR$BIN_DIR" in
        *$'\n'*|*'#'*|*'"'*|*\\*) die "paths must not contain newlines, '#', '\"' or '\\'" ;;
    esac
}

systemd_running() {
    # sd_booted(): systemd is PID 1 exactly when this directory exists.
    [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

service_owner() {
    if [ "$DO_USER" -eq 1 ]; then
        printf '%s:%s' "$SERVICE_USER" "$SERVICE_USER"
    else
        printf '%s:%s' "$(id -un)" "$(id -gn)"
    fi
}

sed_escape() {
    # For the replacement side of s#...#...#: escape backslash, ampersand and the delimiter.
    printf '%s' "$1" | sed -e 's/[\\&#]/\\&/g'
}

is_venv() {
    [ -f "$1/pyvenv.cfg" ]
}

# --- install steps -----------------------------------------------------------------------

check_privileges() {
    if [ "$(id -u)" -ne 0 ]; then
        [ "$DO_APT" -eq 0 ] || die "apt-get needs root: run with sudo, or pass --no-apt"
        [ "$DO_USER" -eq 0 ] || die "creating the '$SERVICE_USER' user needs root: run with sudo, or pass --no-user"
    fi
}

install_packages() {
    if [ "$DO_APT" -eq 0 ]; then
        step "skipping system packages (--no-apt)"
        return
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install ${APT_PACKAGES[*]} yourself and pass --no-apt"
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        step "system packages already installed: ${APT_PACKAGES[*]}"
        return
    fi
    step "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

create_user() {
    if [ "$DO_USER" -eq 0 ]; then
        step "skipping the service user (--no-user): running as $(id -un)"
        return
    fi
    local group
    for group in "${SERVICE_GROUPS[@]}"; do
        if ! getent group "$group" >/dev/null; then
            step "creating group $group"
            groupadd --system "$group"
        fi
    done
    local joined
    joined=$(IFS=,; printf '%s' "${SERVICE_GROUPS[*]}")
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        step "user $SERVICE_USER exists; making sure it is in groups $joined"
        usermod -a -G "$joined" "$SERVICE_USER"
    else
        step "creating system user $SERVICE_USER (groups $joined)"
        useradd --system --user-group --groups "$joined" --home-dir /nonexistent \
            --no-create-home --shell /usr/sbin/nologin --comment "soca-appliance service" \
            "$SERVICE_USER"
    fi
}

create_venv() {
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || die "$PYTHON is not Python 3.11 or newer (use --python PATH)"
    if [ -e "$PREFIX" ] && ! is_venv "$PREFIX"; then
        if [ -n "$(ls -A "$PREFIX" 2>/dev/null)" ]; then
            die "$PREFIX exists and is not a virtualenv; choose another --prefix"
        fi
    fi
    if is_venv "$PREFIX" && ! "$PREFIX/bin/python" -c 'import sys' >/dev/null 2>&1; then
        step "virtualenv $PREFIX is broken (Python upgraded?): recreating it"
        rm -rf -- "$PREFIX"
    fi
    local site=false
    [ "$SYSTEM_SITE" -eq 0 ] || site=true
    if is_venv "$PREFIX"; then
        step "virtualenv $PREFIX exists (system site-packages: $site)"
        sed -i -e "s/^include-system-site-packages = .*/include-system-site-packages = $site/" \
            "$PREFIX/pyvenv.cfg"
    else
        step "creating virtualenv $PREFIX (system site-packages: $site)"
        local venv_args=()
        [ "$SYSTEM_SITE" -eq 0 ] || venv_args+=(--system-site-packages)
        "$PYTHON" -m venv "${venv_args[@]}" "$PREFIX"
    fi
}

install_project() {
    local pip_extra=()
    [ -z "$PIP_ARGS" ] || read -r -a pip_extra <<<"$PIP_ARGS"
    # Build from a clean copy: the checkout stays untouched (no build/ or egg-info in it) and
    # may belong to another user.
    local src
    src=$(mktemp -d "${TMPDIR:-/tmp}/soca-install.XXXXXX")
    # shellcheck disable=SC2064  # expand now: $src is local
    trap "rm -rf -- '$src'" EXIT
    tar -C "$SRC_DIR" --exclude=.git --exclude=build --exclude=dist --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=.venv --exclude=.pytest_cache --exclude=.hypothesis \
        -cf - . | tar -C "$src" -xf -
    step "installing $APP from $SRC_DIR into $PREFIX${PIP_ARGS:+ (pip args: $PIP_ARGS)}"
    "$PREFIX/bin/python" -m pip install --disable-pip-version-check --no-input \
        "${pip_extra[@]}" "$src"
    rm -rf -- "$src"
    trap - EXIT
    if grep -qa "Raspberry Pi" /proc/device-tree/model 2>/dev/null; then
        step "Raspberry Pi: installing lgpio (gpiozero's pin factory on Bookworm and the Pi 5)"
        "$PREFIX/bin/python" -m pip install --disable-pip-version-check --no-input \
            "${pip_extra[@]}" lgpio \
            || warn "lgpio did not install: gpiozero falls back to another pin factory, or none"
    fi
    install -m 0644 "$SRC_DIR/README.md" "$PREFIX/README.md"
    "$PREFIX/bin/soca-appliance" --version >/dev/null || die "the installed soca-appliance does not run"
}

link_commands() {
    if [ -z "$BIN_DIR" ]; then
        step "not linking commands (--bin-dir '')"
        return
    fi
    step "linking soca-diag and soca-appliance into $BIN_DIR"
    mkdir -p "$BIN_DIR"
    ln -sfn "$PREFIX/bin/soca-diag" "$BIN_DIR/soca-diag"
    ln -sfn "$PREFIX/bin/soca-appliance" "$BIN_DIR/soca-appliance"
}

write_config() {
    mkdir -p "$ETC"
    chmod 0755 "$ETC"
    local target="$ETC/config.toml"
    if [ -e "$target" ]; then
        step "keeping existing $target"
        return
    fi
    step "writing $target from etc/config.example.toml (edit agent_id before starting)"
    local tmp
    tmp=$(mktemp "$ETC/.config.toml.XXXXXX")
    sed -e "s#$DEFAULT_ETC/#$(sed_escape "$ETC")/#g" "$SRC_DIR/etc/config.example.toml" >"$tmp"
    chmod 0644 "$tmp"
    mv -f -- "$tmp" "$target"
}

trim() {
    local text=$1
    text=${text//$'\r'/}
    text=${text//$'\n'/}
    text=${text#"${text%%[![:space:]]*}"}
    text=${text%"${text##*[![:space:]]}"}
    printf '%s' "$text"
}

write_key() {
    local target="$ETC/key" key="" owner
    owner=$(service_owner)
    if [ -n "$KEY_FILE" ]; then
        [ -r "$KEY_FILE" ] || die "cannot read key file $KEY_FILE"
        key=$(trim "$(<"$KEY_FILE")")
        [ -n "$key" ] || die "key file $KEY_FILE is empty"
        step "writing the key from $KEY_FILE to $target"
    elif [ -n "${SOCA_PRIVATE_KEY:-}" ]; then
        key=$(trim "$SOCA_PRIVATE_KEY")
        step "writing the key from SOCA_PRIVATE_KEY to $target"
    elif [ -e "$target" ]; then
        step "keeping existing key $target (owner $owner, mode 0600)"
        chown "$owner" "$target"
        chmod 0600 "$target"
        return
    elif [ -t 0 ]; then
        printf 'Soca AI private key (input hidden; empty to skip): ' >&2
        IFS= read -r -s key || key=""
        printf '\n' >&2
        key=$(trim "$key")
        if [ -z "$key" ]; then
            warn "no key entered: write it to $target later (mode 0600, owner $owner)"
            return
        fi
        step "writing the key to $target"
    else
        warn "no key given (--key-file or SOCA_PRIVATE_KEY): write it to $target later (mode 0600, owner $owner)"
        return
    fi
    local tmp
    tmp=$(mktemp "$ETC/.key.XXXXXX")        # created 0600
    printf '%s\n' "$key" >"$tmp"
    chown "$owner" "$tmp"
    chmod 0600 "$tmp"
    mv -f -- "$tmp" "$target"
}

render_unit() {
    local user group groups=() g
    if [ "$DO_USER" -eq 1 ]; then
        user=$SERVICE_USER
        group=$SERVICE_USER
    else
        user=$(id -un)
        group=$(id -gn)
    fi
    for g in "${SERVICE_GROUPS[@]}"; do
        if getent group "$g" >/dev/null; then groups+=("$g"); fi
    done
    sed -e "s#$DEFAULT_PREFIX#$(sed_escape "$PREFIX")#g" \
        -e "s#$DEFAULT_ETC#$(sed_escape "$ETC")#g" \
        -e "s#^User=.*#User=$(sed_escape "$user")#" \
        -e "s#^Group=.*#Group=$(sed_escape "$group")#" \
        -e "s#^SupplementaryGroups=.*#SupplementaryGroups=${groups[*]}#" \
        "$SRC_DIR/etc/$APP.service" | sed -e '/^SupplementaryGroups=$/d'
}

install_service() {
    if [ "$DO_SERVICE" -eq 0 ]; then
        step "skipping the systemd unit (--no-service)"
        return
    fi
    local target="$UNIT_DIR/$APP.service" tmp
    step "installing $target"
    mkdir -p "$UNIT_DIR"
    tmp=$(mktemp "$UNIT_DIR/.$APP.service.XXXXXX")
    render_unit >"$tmp"
    chmod 0644 "$tmp"
    mv -f -- "$tmp" "$target"
    if ! systemd_running; then
        step "systemd is not running (not PID 1): unit installed, not enabled"
        return
    fi
    systemctl daemon-reload
    step "enabling $APP.service (starts at boot)"
    systemctl enable "$APP.service" >/dev/null
    if systemctl is-active --quiet "$APP.service"; then
        step "restarting the running service on the new version"
        systemctl restart "$APP.service"
    fi
}

finish() {
    step "done"
    cat <<EOF
Next:
  1. set agent_id (and the url if not the default) in $ETC/config.toml
  2. put the private key in $ETC/key if it is not there yet (mode 0600, owner $(service_owner))
  3. check the kiosk:   sudo $PREFIX/bin/soca-diag
  4. start it:          sudo systemctl start $APP    (it also starts at every boot)
EOF
}

# --- uninstall ---------------------------------------------------------------------------

uninstall() {
    local unit="$UNIT_DIR/$APP.service"
    if systemd_running && [ "$DO_SERVICE" -eq 1 ]; then
        if systemctl list-unit-files "$APP.service" >/dev/null 2>&1; then
            step "stopping and disabling $APP.service"
            systemctl disable --now "$APP.service" >/dev/null 2>&1 || true
        fi
    fi
    if [ -e "$unit" ]; then
        step "removing $unit"
        rm -f -- "$unit"
        if systemd_running; then systemctl daemon-reload; fi
    else
        step "no unit at $unit"
    fi
    local name
    if [ -n "$BIN_DIR" ]; then
        for name in soca-diag soca-appliance; do
            if [ -L "$BIN_DIR/$name" ] && [ "$(readlink "$BIN_DIR/$name")" = "$PREFIX/bin/$name" ]; then
                step "removing link $BIN_DIR/$name"
                rm -f -- "$BIN_DIR/$name"
            fi
        done
    fi
    if is_venv "$PREFIX"; then
        step "removing virtualenv $PREFIX"
        rm -rf -- "$PREFIX"
    elif [ -e "$PREFIX" ]; then
        warn "$PREFIX is not a virtualenv: left alone"
    else
        step "no virtualenv at $PREFIX"
    fi
    if [ "$DO_USER" -eq 1 ] && id -u "$SERVICE_USER" >/dev/null 2>&1; then
        step "removing user $SERVICE_USER"
        userdel "$SERVICE_USER"
    fi
    if [ "$PURGE" -eq 1 ]; then
        step "purging $ETC/config.toml and $ETC/key"
        rm -f -- "$ETC/config.toml" "$ETC/key"
        rmdir -- "$ETC" 2>/dev/null || true
    else
        step "keeping $ETC/config.toml and $ETC/key (--purge deletes them)"
    fi
    step "uninstalled"
}

main() {
    parse_args "$@"
    if [ "$UNINSTALL" -eq 1 ]; then
        if [ "$(id -u)" -ne 0 ] && [ "$DO_USER" -eq 1 ]; then
            die "removing the '$SERVICE_USER' user needs root: run with sudo, or pass --no-user"
        fi
        uninstall
        return
    fi
    check_privileges
    install_packages
    create_user
    create_venv
    install_project
    link_commands
    write_config
    write_key
    install_service
    finish
}

main "$@"
