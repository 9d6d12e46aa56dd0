// SPDX-License-Identifier: GPL-2.0
//
// Kernel-side I/O latency for one FUSE mount and for the mariadbd process on top of it.
//
// Three sources, each a start/end pair keyed by what identifies one request:
//   FUSE     tp_btf fuse_request_send -> fuse_request_end, slot by request id, filtered by device
//   syscall  syscalls:sys_enter_<name> -> sys_exit_<name> for six file syscalls, per-thread
//            storage, filtered by tgid
//   io_uring tp_btf io_uring_submit_req -> io_uring_complete, key request pointer, filtered by tgid
// Every finished request adds one sample to the log2 histogram and to the exact count/sum of
// its operation, one per-CPU array value, so the hot path does no hashing and takes no lock.
//
// No vmlinux.h: kernel structs are minimal CO-RE shadows that aya relocates against the
// running kernel's BTF, so only the fields named here must exist. tp_btf arguments are
// BTF-typed, so they are dereferenced directly (verifier-checked loads, no helper calls).

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

// Must match `Source` in src/histogram.rs.
#define SOURCE_FUSE 0
#define SOURCE_SYSCALL 1
#define SOURCE_IO_URING 2

#define SLOTS 64
// `latency` index = source * OPS_PER_SOURCE + op. Must match src/loader.rs.
#define SOURCES 3
#define OPS_PER_SOURCE 64
// Slots of fuse_start, a power of two: more than the FUSE requests one connection can have in
// flight (max_background plus one per blocked thread), so consecutive ids never collide.
#define FUSE_INFLIGHT_SLOTS 4096

struct op_latency {
	__u64 count;
	__u64 sum_ns;
	__u64 slots[SLOTS]; // slots[s] counts latencies in [2^s, 2^(s+1)) ns; slot 0 also 0 ns
};

struct inflight {
	__u64 start_ns;
	__u32 op;
	__u32 pad;
};

struct fuse_inflight {
	__u64 req; // struct fuse_req *, 0 = free
	__u64 start_ns;
	__u32 op;
	__u32 pad;
};

// --- configuration, written by the loader: one mount and one process per loader ---
// Single-entry arrays because the verifier inlines array lookups: the filters run on every
// pread/fsync of every process on the machine and must be nearly free when they miss.

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32); // tgid of mariadbd, 0 = none
} cfg_tgid SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32); // kernel dev_t of the FUSE connection (fuse_conn->dev), from st_dev
} cfg_fuse_dev SEC(".maps");

// --- results ---

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SOURCES * OPS_PER_SOURCE);
	__type(key, __u32); // source * OPS_PER_SOURCE + op
	__type(value, struct op_latency);
} latency SEC(".maps");

// --- requests in flight ---

// FUSE requests by id: the kernel numbers a connection's requests 2, 4, 6, ... (`unique`,
// assigned before fuse_request_send fires), so `unique / 2` modulo the size is a slot no other
// request in flight uses. An array slot is an inlined lookup and a few stores, where a hash
// map insert and delete took most of the FUSE programs' time. The slot keeps the request
// pointer, which is what `end` matches: other mounts' requests can carry the same `unique`.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FUSE_INFLIGHT_SLOTS);
	__type(key, __u32);
	__type(value, struct fuse_inflight);
} fuse_start SEC(".maps");

// Per-thread slot, freed with the thread: no hashing and nothing to leak.
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64); // start of the thread's traced syscall in ns, 0 = none
} syscall_start SEC(".maps");

// io_uring requests can be freed without a completion event (IOSQE_CQE_SKIP_SUCCESS), so this
// map is LRU: forgotten starts age out.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); // struct io_kiocb *
	__type(value, struct inflight);
} uring_start SEC(".maps");

// --- CO-RE shadows of kernel structs (field names must match the kernel's) ---

struct fuse_in_header {
	__u32 opcode;
	__u64 unique;
} __attribute__((preserve_access_index));

struct fuse_conn {
	__u32 dev;
} __attribute__((preserve_access_index));

struct fuse_mount {
	struct fuse_conn *fc;
} __attribute__((preserve_access_index));

struct fuse_req {
	struct {
		struct fuse_in_header h;
	} in;
	struct fuse_mount *fm;
} __attribute__((preserve_access_index));

struct io_kiocb {
	__u8 opcode;
} __attribute__((preserve_access_index));

// Branch-free floor(log2(v)) so the verifier sees no loop.
static __always_inline __u32 log2_u32(__u32 v)
{
	__u32 r, shift;

	r = (v > 0xFFFF) << 4;
	v >>= r;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 hi = v >> 32;

	return hi ? log2_u32(hi) + 32 : log2_u32((__u32)v);
}

static __always_inline void record(__u32 source, __u32 op, __u64 start_ns)
{
	__u64 delta_ns = bpf_ktime_get_ns() - start_ns;
	__u32 index = source * OPS_PER_SOURCE + op;
	struct op_latency *lat;

	// Opcodes beyond the table (e.g. CUSE_INIT = 4096) are not counted.
	if (op >= OPS_PER_SOURCE)
		return;
	lat = bpf_map_lookup_elem(&latency, &index);
	if (!lat)
		return;
	lat->count += 1;
	lat->sum_ns += delta_ns;
	lat->slots[log2_u64(delta_ns) & (SLOTS - 1)] += 1;
}

static __always_inline int is_traced_tgid(__u64 pid_tgid)
{
	__u32 zero = 0;
	__u32 *tgid = bpf_map_lookup_elem(&cfg_tgid, &zero);

	return tgid && *tgid && *tgid == (__u32)(pid_tgid >> 32);
}

// --- FUSE: queued by the kernel -> reply processed (includes queueing in front of the daemon) ---

SEC("tp_btf/fuse_request_send")
int BPF_PROG(fuse_request_send, const struct fuse_req *req)
{
	__u32 zero = 0, slot;
	__u32 *dev = bpf_map_lookup_elem(&cfg_fuse_dev, &zero);
	struct fuse_inflight *start;

	if (!dev || *dev != req->fm->fc->dev)
		return 0;
	slot = (req->in.h.unique >> 1) & (FUSE_INFLIGHT_SLOTS - 1);
	start = bpf_map_lookup_elem(&fuse_start, &slot);
	if (!start)
		return 0;
	start->start_ns = bpf_ktime_get_ns();
	start->op = req->in.h.opcode;
	start->req = (__u64)req;
	return 0;
}

SEC("tp_btf/fuse_request_end")
int BPF_PROG(fuse_request_end, const struct fuse_req *req)
{
	__u32 slot = (req->in.h.unique >> 1) & (FUSE_INFLIGHT_SLOTS - 1);
	struct fuse_inflight *start = bpf_map_lookup_elem(&fuse_start, &slot);

	if (!start || start->req != (__u64)req)
		return 0;
	record(SOURCE_FUSE, start->op, start->start_ns);
	start->req = 0;
	return 0;
}

// --- file syscalls of the traced process ---
// One classic tracepoint pair per traced syscall: the kernel runs these programs only for those
// six syscalls (after building a perf record of their arguments), and every other syscall pays
// just its check that its own tracepoint is off. The raw sys_enter/sys_exit ran a program on
// every syscall on the machine, and the FUSE daemon makes many futex and epoll calls per
// request. The programs need neither the arguments nor the return value, so the tracepoint
// context is not declared.

static __always_inline int syscall_enter(void)
{
	__u64 *start;

	if (!is_traced_tgid(bpf_get_current_pid_tgid()))
		return 0;
	start = bpf_task_storage_get(&syscall_start, bpf_get_current_task_btf(), 0,
				     BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (start)
		*start = bpf_ktime_get_ns();
	return 0;
}

static __always_inline int syscall_exit(__u32 op)
{
	__u64 *start;

	if (!is_traced_tgid(bpf_get_current_pid_tgid()))
		return 0;
	start = bpf_task_storage_get(&syscall_start, bpf_get_current_task_btf(), 0, 0);
	if (!start || !*start)
		return 0;
	record(SOURCE_SYSCALL, op, *start);
	*start = 0;
	return 0;
}

// op = index of the syscall in TRACED_SYSCALLS (src/histogram.rs). The loader attaches
// sys_enter_<name> and sys_exit_<name> to the tracepoints of the same names.
#define SYSCALL_PROBES(name, op)                                  \
	SEC("tracepoint/syscalls/sys_enter_" #name)               \
	int sys_enter_##name(void *ctx)                           \
	{                                                         \
		return syscall_enter();                           \
	}                                                         \
	SEC("tracepoint/syscalls/sys_exit_" #name)                \
	int sys_exit_##name(void *ctx)                            \
	{                                                         \
		return syscall_exit(op);                          \
	}

SYSCALL_PROBES(pread64, 0)
SYSCALL_PROBES(pwrite64, 1)
SYSCALL_PROBES(preadv, 2)
SYSCALL_PROBES(pwritev, 3)
SYSCALL_PROBES(fsync, 4)
SYSCALL_PROBES(fdatasync, 5)

// --- io_uring: submitted by a traced process -> completion posted (any context) ---

SEC("tp_btf/io_uring_submit_req")
int BPF_PROG(io_uring_submit_req, struct io_kiocb *req)
{
	__u64 key = (__u64)req;
	struct inflight start = {};

	if (!is_traced_tgid(bpf_get_current_pid_tgid()))
		return 0;
	start.start_ns = bpf_ktime_get_ns();
	start.op = req->opcode;
	bpf_map_update_elem(&uring_start, &key, &start, BPF_ANY);
	return 0;
}

SEC("tp_btf/io_uring_complete")
int BPF_PROG(io_uring_complete, void *ring, void *req)
{
	__u64 key = (__u64)req;
	struct inflight *start = bpf_map_lookup_elem(&uring_start, &key);

	if (!start)
		return 0;
	record(SOURCE_IO_URING, start->op, start->start_ns);
	bpf_map_delete_elem(&uring_start, &key);
	return 0;
}
