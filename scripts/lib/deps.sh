# Shared by scripts/test, scripts/run and scripts/fresh-machine: install what the project's
# commands drive, on a fresh Debian 12 machine or one set up by hand, then check that every
# command and file they use is really there. Source it, then call `ensure_debian_packages`
# (and `ensure_python_packages`) with the sets you need; `require` fails at once, naming
# everything missing, instead of letting tests fail one by one.
#
# Idempotent: a second run finds everything installed and changes nothing.

# Debian packages and, for each, what of it the project uses (a command on PATH or a file).
declare -A DEB_PROVIDES=(
    [kcat]="kcat"
    [qemu-system-x86]="qemu-system-x86_64"
    [qemu-utils]="qemu-img"
    [ovmf]="/usr/share/OVMF/OVMF_CODE_4M.fd /usr/share/OVMF/OVMF_VARS_4M.fd"
    [genisoimage]="genisoimage"
    [binutils]="objcopy"
    [e2fsprogs]="mke2fs"
    [s3cmd]="s3cmd"
    [rclone]="rclone"
    [curl]="curl"
    [iproute2]="ip"
    [dpkg-dev]="dpkg-deb"
    [musl-tools]="musl-gcc"
    [postgresql-15]="/usr/lib/postgresql/15/bin/initdb /usr/lib/postgresql/15/bin/pg_ctl psql runuser useradd"
)

# What the tests drive. kcat: Kafka client; qemu-system-x86, ovmf: boot images; qemu-utils:
# qcow2; genisoimage: cloud-init drives; binutils (objcopy): UKIs; e2fsprogs (mke2fs): the data
# area seed; dpkg-dev (dpkg-deb): unpacking kernel packages; iproute2: network namespaces;
# musl-tools (musl-gcc): ring's C and assembly in the static appliance binaries;
# postgresql-15: the branch database whose outbox the edge gateway reads.
TEST_DEB_PACKAGES=(kcat qemu-system-x86 ovmf qemu-utils genisoimage binutils e2fsprogs s3cmd
    rclone curl iproute2 dpkg-dev musl-tools postgresql-15)

_sudo() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

_installed_version() { dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null | sed -n 's/^install ok installed //p'; }

_candidate_version() { apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p'; }

# ensure_debian_packages PKG...: one apt transaction for everything missing.
#
# qemu-utils and qemu-system-x86 come from one QEMU build: a machine may carry a newer
# qemu-utils from backports, which Breaks Debian's qemu-system-common, so installing
# qemu-system-x86 alone would remove it and leave no qemu-img. Whenever QEMU is wanted both
# are installed together at the version of qemu-system-x86 that Debian offers (a downgrade
# of the backport if need be), so the pair always agrees.
ensure_debian_packages() {
    local want=("$@") install=() p
    local need_qemu=0
    for p in "${want[@]}"; do [[ $p == qemu-system-x86 || $p == qemu-utils ]] && need_qemu=1; done
    for p in "${want[@]}"; do
        [[ $p == qemu-system-x86 || $p == qemu-utils ]] && continue
        [[ -n $(_installed_version "$p") ]] || install+=("$p")
    done
    local qemu_sys qemu_utils
    if ((need_qemu)); then
        qemu_sys=$(_installed_version qemu-system-x86)
        qemu_utils=$(_installed_version qemu-utils)
        if [[ -z $qemu_sys || $qemu_utils != "$qemu_sys" ]]; then
            install+=(qemu-system-x86 qemu-utils)
        fi
    fi
    ((${#install[@]})) || return 0
    echo "installing Debian packages: ${install[*]}"
    _sudo apt-get update -qq
    local args=() v
    for p in "${install[@]}"; do
        if [[ $p == qemu-system-x86 || $p == qemu-utils ]]; then
            v=$(_installed_version qemu-system-x86)
            [[ -n $v ]] || v=$(_candidate_version qemu-system-x86)
            [[ -n $v && $v != "(none)" ]] || { echo "FATAL: apt offers no qemu-system-x86" >&2; return 1; }
            args+=("$p=$v")
        else
            args+=("$p")
        fi
    done
    DEBIAN_FRONTEND=noninteractive _sudo apt-get install -y -qq --allow-downgrades \
        -o Dpkg::Use-Pty=0 "${args[@]}"
}

# require_debian_provides PKG...: fail, naming every package whose command or file is missing.
require_debian_provides() {
    local missing=() p what
    for p in "$@"; do
        for what in ${DEB_PROVIDES[$p]:-}; do
            if [[ $what == /* ]]; then [[ -e $what ]] || missing+=("$what (package $p)")
            else command -v "$what" >/dev/null || missing+=("$what (package $p)"); fi
        done
    done
    if ((${#missing[@]})); then
        printf 'FATAL: missing after installation:\n' >&2
        printf '  %s\n' "${missing[@]}" >&2
        return 1
    fi
}

# The project's Python clients live in their own virtual environment, build/venv: pip may
# not write to a Debian python3 (PEP 668), and a venv never disturbs the machine's packages.
# Put it first on PATH (`use_python_venv`) so tests and examples find python3 and aws there.
VENV_DIR=${VENV_DIR:-build/venv}

_venv_ok() { [[ -x $VENV_DIR/bin/python3 ]] && "$VENV_DIR/bin/python3" -m pip --version >/dev/null 2>&1; }

# ensure_python_packages REQUIREMENTS_FILE: create the venv if needed, pip install into it
# (a quick no-op when everything is satisfied).
ensure_python_packages() {
    if ! _venv_ok; then
        rm -rf "$VENV_DIR"
        if ! python3 -m venv "$VENV_DIR" 2>/dev/null || ! _venv_ok; then
            # Debian's python3 makes venvs only with python3-venv (ensurepip).
            rm -rf "$VENV_DIR"
            ensure_debian_packages python3-venv
            python3 -m venv "$VENV_DIR"
        fi
    fi
    "$VENV_DIR/bin/python3" -m pip install --quiet --disable-pip-version-check -r "$1"
}

use_python_venv() { export PATH="$PWD/$VENV_DIR/bin:$PATH"; }

# require_python_modules MODULE...: fail, naming every module the venv cannot import.
require_python_modules() {
    local missing=() m
    for m in "$@"; do "$VENV_DIR/bin/python3" -c "import $m" 2>/dev/null || missing+=("$m"); done
    if ((${#missing[@]})); then
        echo "FATAL: Python modules missing after installation: ${missing[*]}" >&2
        return 1
    fi
}

# ensure_npm_packages DIR MODULE...: the npm clients of DIR (package.json with its lockfile),
# installed with the machine's own Node.js and npm (Debian's nodejs package would replace the
# machine's: never installed here), `npm ci` only when the lockfile changed since the last
# install; then fail, naming every MODULE that Node.js cannot load from DIR.
ensure_npm_packages() {
    local dir=$1; shift
    require_commands node npm
    if [[ ! -f $dir/node_modules/.package-lock.json || $dir/package-lock.json -nt $dir/node_modules/.package-lock.json ]]; then
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    fi
    local missing=() m
    for m in "$@"; do (cd "$dir" && node -e "require('$m')" 2>/dev/null) || missing+=("$m"); done
    if ((${#missing[@]})); then
        echo "FATAL: npm packages missing in $dir after installation: ${missing[*]}" >&2
        return 1
    fi
}

# require_commands CMD...: fail, naming every command not on PATH.
require_commands() {
    local missing=() c
    for c in "$@"; do command -v "$c" >/dev/null || missing+=("$c"); done
    if ((${#missing[@]})); then
        echo "FATAL: commands missing: ${missing[*]}" >&2
        return 1
    fi
}

# Stage timing: `stage NAME CMD...` runs CMD, prints how long it took, and records it for
# `stage_summary`.
STAGE_NAMES=()
STAGE_SECONDS=()
# Run one stage of a script, timed. Bash ignores errexit inside the command (it runs under
# `||`), also in subshells: a function given here must end at its first failing step itself
# (`&&` between steps, or `|| return`).
stage() {
    local name=$1; shift
    local t0=$SECONDS
    echo "==> $name" >&2
    local rc=0
    "$@" || rc=$?
    STAGE_NAMES+=("$name")
    STAGE_SECONDS+=($((SECONDS - t0)))
    if ((rc)); then echo "==> $name: FAILED (exit $rc) after $((SECONDS - t0)) s" >&2
    else echo "==> $name: $((SECONDS - t0)) s" >&2; fi
    return $rc
}
stage_summary() {
    local i total=0
    echo "stage times:" >&2
    for i in "${!STAGE_NAMES[@]}"; do
        printf '  %-40s %6d s\n' "${STAGE_NAMES[$i]}" "${STAGE_SECONDS[$i]}" >&2
        total=$((total + STAGE_SECONDS[i]))
    done
    printf '  %-40s %6d s (%d min)\n' "total" "$total" $((total / 60)) >&2
}
