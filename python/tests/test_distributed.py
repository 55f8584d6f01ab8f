"""The distributed forms on gloo with several CPU processes (world sizes 1, 2 and 3, uneven
shards): the gather-mode losses and their gradients equal the single-process loss on the
concatenated batch (DESIGN.md's f32 tolerances), and the sharded bank search equals one search
over the whole bank exactly, ties included."""

import datetime
import os
import socket
import sys
import unittest

from torch_support import assert_grad_close, assert_loss_close, torch

import contrastive_kernels as ck

D = 8
# Per world size: samples per rank (bsz), outliers per rank, bank rows per rank (k = 5).
SHARDS = {
    1: ([6], [3], [23]),
    2: ([2, 4], [1, 2], [3, 20]),
    3: ([3, 1, 2], [2, 0, 1], [10, 0, 13]),
}
K = 5


def _global_data():
    g = torch.Generator().manual_seed(1234)
    b = 6
    data = {
        "views": torch.randn(b, 2, D, generator=g),
        "labels": torch.tensor([0, 1, 0, 1, 2, 2]),
        "firm_labels": torch.tensor([0, 0, -1, 1, 1, -1]),
        "outliers": torch.randn(3, D, generator=g),
        "prototypes": torch.randn(3, D, generator=g),
        "clusters": torch.tensor([0, 1, 2, 0, 1, 2]),
        "weights": torch.linspace(0.5, 2.0, 12),
        "queries": torch.randn(4, D, generator=g),
        "bank": torch.randn(23, D, generator=g),
    }
    # Ties across shards: equal rows (and a scaled copy: the same cosine) in different shards.
    data["bank"][15] = data["bank"][1]
    data["bank"][20] = 3.0 * data["bank"][1]
    data["bank"][21] = data["bank"][2]
    return data


def _slices(sizes, rank):
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _leaf(t):
    return t.clone().requires_grad_(True)


def _check_case(make_loss, call, data, rank, world, sizes, grads):
    """call(loss, tensors) with this rank's slices (gather mode) and with the whole batch."""
    gathered, single = make_loss(True), make_loss(False)
    mine = {name: _leaf(data[name][_slices(sizes[name], rank)]) if name in grads else data[name][_slices(sizes[name], rank)] for name in sizes}
    whole = {name: _leaf(data[name]) if name in grads else data[name] for name in sizes}
    for name in grads:
        if name not in sizes:  # replicated (prototypes)
            mine[name], whole[name] = _leaf(data[name]), _leaf(data[name])
    got = call(gathered, mine)
    want = call(single, whole)
    case = type(gathered).__name__
    assert_loss_close(_T, got.detach(), want.detach(), what=f"{case} world {world} rank {rank}")
    got.backward()
    want.backward()
    for name in grads:
        expected = whole[name].grad if name not in sizes else whole[name].grad[_slices(sizes[name], rank)]
        assert_grad_close(_T, mine[name].grad, expected, f"{case} {name} world {world} rank {rank}")


_T = unittest.TestCase()  # its assertions, inside the worker processes


def _worker(rank, world, port):
    import torch.distributed as dist

    # gloo's pairs on the loopback interface, like the store: by default gloo resolves the host
    # name, which on some machines names an interface whose connections reset under load.
    if os.path.exists("/sys/class/net/lo"):  # Linux's loopback
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # A rank left waiting in a collective fails after 2 minutes instead of gloo's default 30.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    ok = False
    try:
        data = _global_data()
        bsz, n_out, n_bank = SHARDS[world]
        per_sample = {"views": bsz}

        _check_case(lambda g: ck.NTXentLoss(0.5, gather=g), lambda m, t: m(t["views"]), data, rank, world, per_sample, ["views"])
        _check_case(
            lambda g: ck.SupConLoss(0.1, gather=g),
            lambda m, t: m(t["views"], t["labels"]),
            data, rank, world, {"views": bsz, "labels": bsz}, ["views"],
        )
        _check_case(
            lambda g: ck.FIRMLoss(0.2, mode="pairwise", gather=g),
            lambda m, t: m(t["views"][:, 0], t["views"][:, 1], labels=t["firm_labels"]),
            data, rank, world, {"views": bsz, "firm_labels": bsz}, ["views"],
        )
        _check_case(
            lambda g: ck.FIRMLoss(0.2, gather=g),
            lambda m, t: m(t["views"], labels=t["firm_labels"]),
            data, rank, world, {"views": bsz, "firm_labels": bsz}, ["views"],
        )
        for alpha in (0.3, 0.0):
            _check_case(
                lambda g: ck.OECLLoss(0.5, alpha=alpha, gather=g),
                lambda m, t: m(t["views"], outliers=t["outliers"]),
                data, rank, world, {"views": bsz, "outliers": n_out}, ["views", "outliers"] if alpha > 0 else ["views"],
            )
        _check_case(
            lambda g: ck.OutlierExposureLoss(0.5, gather=g),
            lambda m, t: m(t["views"], outliers=t["outliers"]),
            data, rank, world, {"views": bsz, "outliers": n_out}, ["views", "outliers"],
        )
        _check_case(
            lambda g: ck.ClusterAwareLoss(0.5, gather=g),
            lambda m, t: m(t["views"], clusters=t["clusters"], prototypes=t["prototypes"]),
            data, rank, world, {"views": bsz, "clusters": bsz}, ["views", "prototypes"],
        )

        # The functional form with weights, mean and per-anchor reductions (rows: one view each).
        for reduction in ("mean", "per_anchor"):
            config = ck.LossConfig.preset("supcon", 0.1, reduction=reduction)
            rows = torch.cat(torch.unbind(data["views"], 1))
            inst = torch.arange(6).repeat(2)
            label = data["labels"].repeat(2)
            w = data["weights"]
            # Rank r holds rows of its samples, both views (rows r-major, as a user would shard).
            order = torch.cat([torch.cat([torch.arange(6)[_slices(bsz, r)], 6 + torch.arange(6)[_slices(bsz, r)]]) for r in range(world)])
            xs = _leaf(rows[order])
            n_rows = [2 * s for s in bsz]
            own = _slices(n_rows, rank)
            mine = _leaf(xs.detach()[own])
            got = ck.distributed.gather_loss(mine, inst[order][own], config=config, label=label[order][own], weight=w[order][own])
            want = ck.contrastive_loss(xs, inst[order], config=config, label=label[order], weight=w[order])
            if reduction == "per_anchor":
                want = want[own]
                assert_loss_close(_T, got.detach(), want.detach(), what="per_anchor")
                got.sum().backward()
                want.sum().backward()
            else:
                assert_loss_close(_T, got.detach(), want.detach(), what="weighted mean")
                got.backward()
                want.backward()
            if reduction == "mean":
                assert_grad_close(_T, mine.grad, xs.grad[own], "weighted mean")
            else:
                # Each rank's outputs are its own rows' losses; backward on every rank gives each
                # row the gradient of the sum of all ranks' outputs: the single process's
                # gradients of the per-rank sums, summed over ranks.
                total = xs.grad.clone()
                torch.distributed.all_reduce(total)
                assert_grad_close(_T, mine.grad, total[own], "per_anchor")

        # Pairwise with OECL's penalty rows among the anchors (each rank: its samples' view 1 and
        # its outliers as anchors, its samples' view 2 as keys), sum.
        from dataclasses import replace

        config = replace(ck.LossConfig.preset("firm_pairwise", 0.2, reduction="sum"), norm_penalty=0.3)
        anchors_of = lambda r: torch.cat([data["views"][_slices(bsz, r), 0], data["outliers"][_slices(n_out, r)]])
        role_of = lambda r: torch.tensor([0] * bsz[r] + [2] * n_out[r], dtype=torch.uint8)
        inst_of = lambda r: torch.cat([torch.arange(6)[_slices(bsz, r)], 100 + torch.arange(3)[_slices(n_out, r)]])
        label_of = lambda r: torch.cat([data["firm_labels"][_slices(bsz, r)], torch.full((n_out[r],), -1)])
        mine, mine_keys = _leaf(anchors_of(rank)), _leaf(data["views"][_slices(bsz, rank), 1])
        got = ck.distributed.gather_loss(mine, inst_of(rank), config=config, label=label_of(rank), role=role_of(rank), keys=mine_keys,
                                         key_instance=torch.arange(6)[_slices(bsz, rank)], key_label=data["firm_labels"][_slices(bsz, rank)])
        xs = _leaf(torch.cat([anchors_of(r) for r in range(world)]))
        ks = _leaf(torch.cat([data["views"][_slices(bsz, r), 1] for r in range(world)]))
        want = ck.contrastive_loss(xs, torch.cat([inst_of(r) for r in range(world)]), config=config,
                                   label=torch.cat([label_of(r) for r in range(world)]), role=torch.cat([role_of(r) for r in range(world)]),
                                   keys=ks, key_instance=torch.cat([torch.arange(6)[_slices(bsz, r)] for r in range(world)]),
                                   key_label=torch.cat([data["firm_labels"][_slices(bsz, r)] for r in range(world)]))
        assert_loss_close(_T, got.detach(), want.detach(), what=f"pairwise with penalty rows, world {world} rank {rank}")
        got.backward()
        want.backward()
        rows_before = sum(bsz[r] + n_out[r] for r in range(rank))
        assert_grad_close(_T, mine.grad, xs.grad[rows_before : rows_before + bsz[rank] + n_out[rank]], "pairwise anchors")
        assert_grad_close(_T, mine_keys.grad, ks.grad[_slices(bsz, rank)], "pairwise keys")

        # Shards that leave ranks empty: rank 0 holds every row, the others none (their share 0,
        # still in the backward's collectives).
        config = ck.LossConfig.preset("nt_xent", 0.5)
        rows = torch.cat(torch.unbind(data["views"], 1))
        inst = torch.arange(6).repeat(2)
        n_rows = [12] + [0] * (world - 1)
        own = _slices(n_rows, rank)
        mine = _leaf(rows[own])
        xs = _leaf(rows)
        got = ck.distributed.gather_loss(mine, inst[own], config=config)
        want = ck.contrastive_loss(xs, inst, config=config)
        assert_loss_close(_T, got.detach(), want.detach(), what=f"empty ranks, world {world} rank {rank}")
        got.backward()
        want.backward()
        assert_grad_close(_T, mine.grad, xs.grad[own], f"empty ranks, world {world} rank {rank}")

        # An anchor with no positive on the last rank (global row 11's instance is its own): the
        # library's error there, naming the global row, and an error on every other rank (none
        # left waiting in a collective).
        lonely = inst.clone()
        lonely[11], lonely[5] = 99, 4  # row 5, row 11's other view, joins sample 4
        owner = world - 1
        n_rows = [4] * (world - 1) + [12 - 4 * (world - 1)]
        own = _slices(n_rows, rank)
        try:
            ck.distributed.gather_loss(rows[own], lonely[own], config=config)
            raise AssertionError(f"world {world} rank {rank}: no error for an anchor without a positive")
        except ck.CkError as e:
            assert rank == owner and "row 11 (global)" in e.message, f"rank {rank}: {e.message}"
        except RuntimeError as e:
            assert rank != owner and f"[{owner}]" in str(e), f"rank {rank}: {e}"

        # Sharded search: identical to one search over the whole bank, ties included.
        shard = data["bank"][_slices(n_bank, rank)]
        got_d, got_i = ck.distributed.sharded_search(data["queries"], shard, K)
        want_d, want_i = ck.knn_search(data["queries"], data["bank"], K)
        assert torch.equal(got_i, want_i), f"world {world} rank {rank}: {got_i.tolist()} vs {want_i.tolist()}"
        assert torch.equal(got_d, want_d), f"world {world} rank {rank}: values differ"
        queries = torch.cat([data["queries"], data["bank"][1:2]])  # its ties: rows 1, 15, 20
        got_d, got_i = ck.distributed.sharded_search(queries, shard, K)
        want_d, want_i = ck.knn_search(queries, data["bank"], K)
        assert torch.equal(got_i, want_i) and torch.equal(got_d, want_d), f"ties: {got_i[-1].tolist()} vs {want_i[-1].tolist()}"
        assert want_i[-1, :3].tolist() == [1, 15, 20], want_i[-1].tolist()
        try:
            ck.distributed.sharded_search(data["queries"], shard, 24)
            raise AssertionError("k above the bank was accepted")
        except ValueError as e:
            assert str(e).startswith("k"), str(e)
        ok = True
    finally:
        if ok:
            dist.barrier()  # no rank tears its connections down while another still uses them
        dist.destroy_process_group()
    # Every check passed and the group is gone: leave without the interpreter's teardown, where
    # gloo's threads sometimes abort the process after the work is done ("terminate called
    # without an active exception", traced past destroy_process_group on every rank; about one
    # run in four at world size 3 on 2 cores).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class Gloo(unittest.TestCase):
    def run_world(self, world):
        import torch.multiprocessing as mp

        # One retry when a worker died by a signal (gloo's transport aborting, "terminate called
        # without an active exception": seen at interpreter exit, which the workers now skip); a
        # failed check in a worker raises ProcessRaisedException, which is never retried.
        for attempt in range(2):
            with socket.socket() as s:  # a free port for the TCP store (rank 0 listens on it)
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            try:
                mp.spawn(_worker, args=(world, port), nprocs=world, join=True)
                return
            except mp.ProcessExitedException as e:
                if attempt == 1 or e.exit_code >= 0:
                    raise
                print(f"world {world}: a worker died by signal {-e.exit_code}; retrying once", file=sys.stderr)

    def test_world_size_1(self):
        self.run_world(1)

    def test_world_size_2(self):
        self.run_world(2)

    def test_world_size_3(self):
        self.run_world(3)


if __name__ == "__main__":
    unittest.main()
