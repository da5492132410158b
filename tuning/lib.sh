# shellcheck shell=bash
# tuning/lib.sh: shared by tuning/check and tuning/apply (sourced, not run).
#
# One place holds every setting a million connections depend on, the value it
# needs (see tuning/README.md for the reasoning behind each number) and how to
# read it. `collect` fills the R_* arrays, one entry per setting:
#
#   R_NAME    setting name as printed (sysctl name where there is one)
#   R_CUR     current value ("n/a" when the file or feature is missing)
#   R_NEED    needed value or rule, as printed
#   R_STATUS  OK or NEEDS
#   R_KIND    sysctl | sysfs | soft-limit | hard-limit | memlock | info
#   R_TARGET  value apply would write (sysctl/sysfs); the current value if OK
#
# Nothing here changes the system, and nothing fails on a missing file.

# Testing only: a directory that stands in for / when reading /proc, /sys and
# writing /etc (e.g. TUNING_ROOT=/tmp/fakeroot tuning/check). Empty = the host.
TUNING_ROOT=${TUNING_ROOT:-}

# ---- needed values (tuning/README.md explains each) -------------------------
NEED_NOFILE=1100000           # per process: 1M sockets + listeners, rings, headroom
NEED_NR_OPEN=1100000          # ceiling for any RLIMIT_NOFILE
NEED_FILE_MAX=2200000         # system-wide: server + load generator on one host
NEED_PORT_LO=1024
NEED_PORT_HI=65535
NEED_SOMAXCONN=65535
NEED_SYN_BACKLOG=65535
NEED_NETDEV_BACKLOG=16384
NEED_TCP_MEM=(1048576 1572864 2097152)   # pages: 4 / 6 / 8 GiB with 4 KiB pages
NEED_BUF_MIN=4096             # tcp_rmem/tcp_wmem first field, at most
NEED_BUF_DEF=16384            # tcp_rmem/tcp_wmem second field (default), at most
REC_TCP_BUF="4096 16384 16777216"
NEED_MEMLOCK_MIN_KIB=8192     # 8 MiB, and at least 512 KiB per executor (CPU)
NEED_MEMLOCK_PER_CPU_KIB=512
NEED_CONNTRACK_MAX=2000000
NEED_CONNTRACK_BUCKETS=262144
NEED_MAX_MAP_COUNT=262144
NEED_KERNEL_MAJOR=5           # glommio needs >= 5.8
NEED_KERNEL_MINOR=8
NEED_MEM_GIB=16

R_NAME=() R_CUR=() R_NEED=() R_STATUS=() R_KIND=() R_TARGET=()

add_row() { # name current needed status kind target
    R_NAME+=("$1") R_CUR+=("$2") R_NEED+=("$3") R_STATUS+=("$4")
    R_KIND+=("$5") R_TARGET+=("$6")
}

is_uint() { [[ ${1:-} =~ ^[0-9]+$ ]]; }

# The file's content on one line, whitespace squeezed to single spaces; "n/a"
# when it is missing or unreadable.
read_file() {
    local f=$1 v
    if [[ -r $f ]] && v=$(cat -- "$f" 2>/dev/null) && [[ -n $v ]]; then
        local -a words
        read -r -a words <<<"${v//$'\n'/ }"
        printf '%s\n' "${words[*]}"
    else
        printf 'n/a\n'
    fi
}

sysctl_path() { local k=$1; printf '%s/proc/sys/%s\n' "$TUNING_ROOT" "${k//.//}"; }
read_sysctl() { read_file "$(sysctl_path "$1")"; }

ncpus() {
    local n
    n=$(getconf _NPROCESSORS_ONLN 2>/dev/null) || n=
    if ! is_uint "$n" || ((n < 1)); then n=$(nproc 2>/dev/null) || n=1; fi
    is_uint "$n" || n=1
    printf '%s\n' "$n"
}

# A sysctl holding one integer that must be at least $2. $3 is the status when
# the sysctl does not exist (NEEDS for core knobs, OK for optional features).
row_sysctl_min() {
    local key=$1 need=$2 absent=${3:-NEEDS} needtxt=${4:-">= $2"} cur
    cur=$(read_sysctl "$key")
    if is_uint "$cur"; then
        if ((cur >= need)); then
            add_row "$key" "$cur" "$needtxt" OK sysctl "$cur"
        else
            add_row "$key" "$cur" "$needtxt" NEEDS sysctl "$need"
        fi
    else
        add_row "$key" "$cur" "$needtxt" "$absent" sysctl "$need"
    fi
}

row_nofile() { # soft|hard
    local which=$1 flag cur status kind
    if [[ $which == soft ]]; then flag=-Sn kind=soft-limit; else flag=-Hn kind=hard-limit; fi
    cur=$(ulimit "$flag" 2>/dev/null) || cur=n/a
    if [[ $cur == unlimited ]] || { is_uint "$cur" && ((cur >= NEED_NOFILE)); }; then
        status=OK
    else
        status=NEEDS
    fi
    add_row "nofile $which (ulimit $flag)" "$cur" ">= $NEED_NOFILE" "$status" "$kind" "$NEED_NOFILE"
}

row_port_range() {
    local key=net.ipv4.ip_local_port_range cur lo hi status=NEEDS
    cur=$(read_sysctl "$key")
    read -r lo hi _ <<<"$cur"
    if is_uint "$lo" && is_uint "$hi" && ((lo <= NEED_PORT_LO && hi >= NEED_PORT_HI)); then
        status=OK
    fi
    local target="$NEED_PORT_LO $NEED_PORT_HI"
    [[ $status == OK ]] && target=$cur
    add_row "$key" "$cur" "$NEED_PORT_LO $NEED_PORT_HI" "$status" sysctl "$target"
}

row_tcp_mem() {
    local key=net.ipv4.tcp_mem cur status=OK i
    local -a f t=()
    cur=$(read_sysctl "$key")
    read -r -a f <<<"$cur"
    for i in 0 1 2; do
        if is_uint "${f[i]:-}"; then
            if ((f[i] < NEED_TCP_MEM[i])); then status=NEEDS t+=("${NEED_TCP_MEM[i]}"); else t+=("${f[i]}"); fi
        else
            status=NEEDS t+=("${NEED_TCP_MEM[i]}")
        fi
    done
    add_row "$key" "$cur" ">= ${NEED_TCP_MEM[*]}" "$status" sysctl "${t[*]}"
}

row_tcp_buf() { # net.ipv4.tcp_rmem | net.ipv4.tcp_wmem
    local key=$1 cur min def max status=NEEDS
    cur=$(read_sysctl "$key")
    read -r min def max _ <<<"$cur"
    if is_uint "$min" && is_uint "$def" && is_uint "$max" \
        && ((min <= NEED_BUF_MIN && def <= NEED_BUF_DEF)); then
        status=OK
    fi
    local target=$REC_TCP_BUF
    [[ $status == OK ]] && target=$cur
    add_row "$key" "$cur" "min<=$NEED_BUF_MIN default<=$NEED_BUF_DEF" "$status" sysctl "$target"
}

memlock_need_kib() {
    local n need
    n=$(ncpus)
    need=$((n * NEED_MEMLOCK_PER_CPU_KIB))
    ((need < NEED_MEMLOCK_MIN_KIB)) && need=$NEED_MEMLOCK_MIN_KIB
    printf '%s\n' "$need"
}

row_memlock() {
    local cur need status=NEEDS
    need=$(memlock_need_kib)
    cur=$(ulimit -l 2>/dev/null) || cur=n/a
    if [[ $cur == unlimited ]] || { is_uint "$cur" && ((cur >= need)); }; then status=OK; fi
    add_row "memlock KiB (ulimit -l)" "$cur" ">= $need or unlimited" "$status" memlock "$need"
}

row_io_uring_disabled() {
    local key=kernel.io_uring_disabled cur status
    cur=$(read_sysctl "$key")
    case $cur in
        0) status=OK ;;
        n/a) status=OK ;;   # kernels before 6.6 have no such switch
        *) status=NEEDS ;;
    esac
    local target=0
    add_row "$key" "$cur" "0" "$status" sysctl "$target"
}

row_kernel() {
    local rel major minor status=NEEDS
    rel=$(read_file "$TUNING_ROOT/proc/sys/kernel/osrelease")
    if [[ $rel == n/a && -z $TUNING_ROOT ]]; then rel=$(uname -r 2>/dev/null) || rel=n/a; fi
    if [[ $rel =~ ^([0-9]+)\.([0-9]+) ]]; then
        major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
        if ((major > NEED_KERNEL_MAJOR || (major == NEED_KERNEL_MAJOR && minor >= NEED_KERNEL_MINOR))); then
            status=OK
        fi
    fi
    add_row "kernel release (glommio)" "$rel" ">= $NEED_KERNEL_MAJOR.$NEED_KERNEL_MINOR" "$status" info ""
}

row_conntrack() {
    # conntrack is loaded (module or built in) exactly when its sysctls exist;
    # when it is not, there is nothing to size.
    row_sysctl_min net.netfilter.nf_conntrack_max "$NEED_CONNTRACK_MAX" OK ">= $NEED_CONNTRACK_MAX if loaded"
    row_sysctl_min net.netfilter.nf_conntrack_buckets "$NEED_CONNTRACK_BUCKETS" OK ">= $NEED_CONNTRACK_BUCKETS if loaded"
}

# Paths of every CPU's scaling_governor file, one per line (none without cpufreq).
governor_files() {
    local f
    for f in "$TUNING_ROOT"/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor; do
        [[ -e $f ]] && printf '%s\n' "$f"
    done
}

row_governor() {
    local f v cur="" status=OK
    local -A seen=()
    while IFS= read -r f; do
        v=$(read_file "$f")
        [[ $v == performance ]] || status=NEEDS
        if [[ -z ${seen[$v]:-} ]]; then
            seen[$v]=1
            cur+="${cur:+,}$v"
        fi
    done < <(governor_files)
    # No cpufreq (VMs, fixed-clock hosts): nothing to set.
    [[ -z $cur ]] && cur=n/a
    add_row "cpufreq governor" "$cur" "performance" "$status" sysfs performance
}

thp_file() { printf '%s/sys/kernel/mm/transparent_hugepage/enabled\n' "$TUNING_ROOT"; }

row_thp() {
    local raw cur status
    raw=$(read_file "$(thp_file)")
    if [[ $raw =~ \[([a-z]+)\] ]]; then cur=${BASH_REMATCH[1]}; else cur=$raw; fi
    case $cur in
        madvise | never | n/a) status=OK ;;
        *) status=NEEDS ;;
    esac
    local target=madvise
    [[ $status == OK ]] && target=$cur
    add_row "transparent_hugepage" "$cur" "madvise or never" "$status" sysfs "$target"
}

irqbalance_running() {
    local c name
    for c in "$TUNING_ROOT"/proc/[0-9]*/comm; do
        name=
        { read -r name <"$c"; } 2>/dev/null || continue
        [[ $name == irqbalance ]] && return 0
    done
    return 1
}

# IRQ numbers of physical NICs (interfaces with a device, lo and virtual ones
# skipped), one per line.
nic_irqs() {
    local ifdir dev d f
    for ifdir in "$TUNING_ROOT"/sys/class/net/*; do
        [[ -e $ifdir/device ]] || continue
        dev=$(readlink -f -- "$ifdir/device" 2>/dev/null) || continue
        # MSI vectors sit on the PCI function: the device itself, or its parent
        # for virtio-net (virtioN under the PCI device).
        for d in "$dev" "${dev%/*}"; do
            if [[ -d $d/msi_irqs ]]; then
                for f in "$d"/msi_irqs/*; do
                    [[ -e $f ]] && printf '%s\n' "${f##*/}"
                done
                continue 2
            fi
        done
        f=$(read_file "$dev/irq")
        is_uint "$f" && ((f > 0)) && printf '%s\n' "$f"
    done
}

# CPUs that took at least 10% of the NICs' interrupts so far, comma-separated;
# empty when the NICs have had no interrupts (or there are none).
nic_irq_cpus() {
    local irqs
    irqs=$(nic_irqs | sort -un | tr '\n' ' ')
    [[ -n ${irqs// /} ]] || return 0
    awk -v want="$irqs" '
        BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) keep[w[i] ":"] = 1 }
        NR == 1 { ncol = NF; for (i = 1; i <= NF; i++) { name[i] = $i; sub(/^CPU/, "", name[i]) } next }
        ($1 in keep) {
            for (i = 1; i <= ncol; i++) { c = $(i + 1); if (c ~ /^[0-9]+$/) { cnt[i] += c; tot += c } }
        }
        END {
            if (tot == 0) exit
            out = ""
            for (i = 1; i <= ncol; i++) if (cnt[i] * 10 >= tot) out = out (out == "" ? "" : ",") name[i]
            print out
        }' "$TUNING_ROOT/proc/interrupts" 2>/dev/null
}

row_irq() {
    local cur status=OK cpus n
    n=$(ncpus)
    if irqbalance_running; then
        cur="irqbalance running"
    else
        cpus=$(nic_irq_cpus)
        if [[ -z $cpus ]]; then
            cur="irqbalance off, no NIC IRQs"
        else
            cur="irqbalance off, NIC IRQs on CPU $cpus"
            [[ $cpus == *,* ]] || ((n <= 1)) || status=NEEDS
        fi
    fi
    add_row "irqbalance / NIC IRQ CPUs" "$cur" "irqbalance or NIC IRQs spread" "$status" info ""
}

# Memory this process may use: MemTotal, or the cgroup limit when lower. KiB.
mem_kib() {
    local total lim cg line path
    total=$(awk '/^MemTotal:/ { print $2 }' "$TUNING_ROOT/proc/meminfo" 2>/dev/null)
    is_uint "$total" || { printf 'n/a\n'; return; }
    lim=
    while IFS= read -r line; do
        cg=${line#*:*:}
        case $line in
            0::*) path=$TUNING_ROOT/sys/fs/cgroup$cg/memory.max ;;
            *:memory:*) path=$TUNING_ROOT/sys/fs/cgroup/memory$cg/memory.limit_in_bytes ;;
            *) continue ;;
        esac
        local v
        v=$(read_file "$path")
        # "max" or a value near 2^63 means no limit; bash integers stop at 2^63.
        if is_uint "$v" && ((${#v} < 19)); then
            v=$((v / 1024))
            if [[ -z $lim ]] || ((v < lim)); then lim=$v; fi
        fi
    done < <(cat "$TUNING_ROOT/proc/self/cgroup" 2>/dev/null)
    if [[ -n $lim ]] && ((lim < total)); then printf '%s cgroup\n' "$lim"; else printf '%s\n' "$total"; fi
}

row_memory() {
    local m kib src cur status=NEEDS
    m=$(mem_kib)
    read -r kib src <<<"$m"
    if is_uint "$kib"; then
        cur=$(awk -v k="$kib" 'BEGIN { printf "%.1f GiB", k / 1048576 }')
        [[ -n ${src:-} ]] && cur+=" (cgroup limit)"
        # MemTotal is a little below the installed size (kernel, firmware): allow 5%.
        ((kib >= NEED_MEM_GIB * 1048576 * 95 / 100)) && status=OK
    else
        cur=n/a
    fi
    add_row "memory (RAM or cgroup)" "$cur" ">= $NEED_MEM_GIB GiB" "$status" info ""
}

collect() {
    R_NAME=() R_CUR=() R_NEED=() R_STATUS=() R_KIND=() R_TARGET=()
    row_nofile soft
    row_nofile hard
    row_sysctl_min fs.nr_open "$NEED_NR_OPEN"
    row_sysctl_min fs.file-max "$NEED_FILE_MAX"
    row_port_range
    row_sysctl_min net.core.somaxconn "$NEED_SOMAXCONN"
    row_sysctl_min net.ipv4.tcp_max_syn_backlog "$NEED_SYN_BACKLOG"
    row_sysctl_min net.core.netdev_max_backlog "$NEED_NETDEV_BACKLOG"
    row_tcp_mem
    row_tcp_buf net.ipv4.tcp_rmem
    row_tcp_buf net.ipv4.tcp_wmem
    row_memlock
    row_io_uring_disabled
    row_kernel
    row_conntrack
    row_sysctl_min vm.max_map_count "$NEED_MAX_MAP_COUNT"
    row_governor
    row_thp
    row_irq
    row_memory
}

count_needs() {
    local s n=0
    for s in "${R_STATUS[@]}"; do [[ $s == NEEDS ]] && n=$((n + 1)); done
    printf '%s\n' "$n"
}
