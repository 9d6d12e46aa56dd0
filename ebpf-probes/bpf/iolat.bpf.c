// SPDX-License-Identifier: GPL-2.0
//
// Kernel-side I/O latency for one FUSE mount and for the mariadbd process on top of it.
//
// Three sources, each a start/end pair keyed by what identifies one request:
//   FUSE     tp_btf fuse_request_send -> fuse_request_end, key request pointer, filtered by device
//   syscall  sys_enter_* -> sys_exit_* of the file syscalls, per-thread storage, filtered by tgid
//   io_uring tp_btf io_uring_submit_req -> io_uring_complete, key request pointer, filtered by tgid
// Every finished request adds one sample to the log2 histogram and to the exact count/sum of
// its operation, one per-CPU map value, so the hot path does one lookup and takes no lock.
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

struct op_key {
	__u32 source;
	__u32 op; // FUSE opcode, syscall number or io_uring opcode
};

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
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 256); // preallocated per CPU; 3 sources x < 64 ops in practice
	__type(key, struct op_key);
	__type(value, struct op_latency);
} latency SEC(".maps");

// All zeroes, never written: the initial value for a new `latency` entry (too big for the stack).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct op_latency);
} zero_latency SEC(".maps");

// --- requests in flight ---
// Every FUSE request ends (also on abort), so a plain hash map (cheaper than LRU) cannot fill
// up. io_uring requests can be freed without a completion event (IOSQE_CQE_SKIP_SUCCESS), so
// that map is LRU.

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); // struct fuse_req *, alive from send to end
	__type(value, struct inflight);
} fuse_start SEC(".maps");

// Per-thread slot, freed with the thread: no hashing and nothing to leak.
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct inflight);
} syscall_start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); // struct io_kiocb *
	__type(value, struct inflight);
} uring_start SEC(".maps");

// --- CO-RE shadows of kernel structs (field names must match the kernel's) ---

struct fuse_in_header {
	__u32 opcode;
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

// Classic tracepoint payloads, from /sys/kernel/tracing/events/syscalls/*/format (stable ABI).
struct syscall_enter_args {
	__u64 common;
	__s32 syscall_nr;
	__u32 pad;
	__u64 args[6];
};

struct syscall_exit_args {
	__u64 common;
	__s32 syscall_nr;
	__u32 pad;
	__s64 ret;
};

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

static __always_inline void record(__u32 source, const struct inflight *start)
{
	__u64 delta_ns = bpf_ktime_get_ns() - start->start_ns;
	struct op_key key = { .source = source, .op = start->op };
	struct op_latency *lat = bpf_map_lookup_elem(&latency, &key);

	if (!lat) {
		__u32 zero = 0;
		struct op_latency *initial = bpf_map_lookup_elem(&zero_latency, &zero);

		if (!initial)
			return;
		// If another CPU created the key first, NOEXIST fails but our per-CPU value exists.
		bpf_map_update_elem(&latency, &key, initial, BPF_NOEXIST);
		lat = bpf_map_lookup_elem(&latency, &key);
		if (!lat)
			return;
	}
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
	__u64 key = (__u64)req;
	struct inflight start = {};
	__u32 zero = 0;
	__u32 *dev = bpf_map_lookup_elem(&cfg_fuse_dev, &zero);

	if (!dev || *dev != req->fm->fc->dev)
		return 0;
	start.start_ns = bpf_ktime_get_ns();
	start.op = req->in.h.opcode;
	bpf_map_update_elem(&fuse_start, &key, &start, BPF_ANY);
	return 0;
}

SEC("tp_btf/fuse_request_end")
int BPF_PROG(fuse_request_end, const struct fuse_req *req)
{
	__u64 key = (__u64)req;
	struct inflight *start = bpf_map_lookup_elem(&fuse_start, &key);

	if (!start)
		return 0;
	record(SOURCE_FUSE, start);
	bpf_map_delete_elem(&fuse_start, &key);
	return 0;
}

// --- file syscalls of the traced processes; one program pair attached to every syscall ---

SEC("tracepoint/syscalls/sys_enter")
int syscall_enter(struct syscall_enter_args *ctx)
{
	struct inflight *start;

	if (!is_traced_tgid(bpf_get_current_pid_tgid()))
		return 0;
	start = bpf_task_storage_get(&syscall_start, bpf_get_current_task_btf(), 0,
				     BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!start)
		return 0;
	start->start_ns = bpf_ktime_get_ns();
	start->op = ctx->syscall_nr;
	return 0;
}

SEC("tracepoint/syscalls/sys_exit")
int syscall_exit(struct syscall_exit_args *ctx)
{
	struct inflight *start;

	if (!is_traced_tgid(bpf_get_current_pid_tgid()))
		return 0;
	start = bpf_task_storage_get(&syscall_start, bpf_get_current_task_btf(), 0, 0);
	if (!start || !start->start_ns)
		return 0;
	record(SOURCE_SYSCALL, start);
	start->start_ns = 0;
	return 0;
}

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
	record(SOURCE_IO_URING, start);
	bpf_map_delete_elem(&uring_start, &key);
	return 0;
}
