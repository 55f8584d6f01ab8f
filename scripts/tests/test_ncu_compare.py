"""Tests of scripts/ncu_compare.py (the GPU run kit's phase 4 table), standard library only.

    python3 -m unittest discover -s scripts/tests

The profiles below are written in the layout of `ncu --import R --csv --page raw` (a header of
metric names, a units row with an empty ID, one row per launch); the values are made up.
"""

import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ncu_compare as nc  # noqa: E402

HEADER = ('"ID","Process ID","Process Name","Kernel Name","gpu__time_duration.sum",'
          '"sm__warps_active.avg.pct_of_peak_sustained_active","smsp__inst_executed.sum",'
          '"l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum","l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum",'
          '"sm__inst_executed_pipe_xu.sum"')
UNITS = '"","","","","usecond","%","inst","","","inst"'
PROFILE = "\n".join([
    "==PROF== Connected to process 1234",
    HEADER,
    UNITS,
    '"0","1234","ckbench","contrastive_forward_sym_bf16(CkContrastiveForwardParams)","40.0","30.5","1,000","10","5","100"',
    '"1","1234","ckbench","contrastive_backward_bf16_g1(CkContrastiveBackwardParams)","95.5","24.0","2,000,000","1,500,000","300,000","70,000"',
    '"2","1234","ckbench","contrastive_backward_bf16_g1(CkContrastiveBackwardParams)","99.0","25.0","2,100,000","1,600,000","300,000","70,000"',
    '"3","1234","ckbench","contrastive_reduce","3.0","10","5","1","1","0"',
])

MODEL = [
    {"kind": "kernel", "kernel": "contrastive_backward_bf16_g1", "ctas_per_sm": 2, "theoretical_occupancy": 0.125,
     "shapes": [{"n": 8192, "d": 128, "est_time_us": 88.7, "bound": "smem", "warp_instructions": 2.0e6,
                 "mma_instructions": 1.0e6, "mufu_instructions": 65536.0, "smem_wavefronts": 2.2e6,
                 "smem_wavefronts_min": 1.8e6}]},
    {"kind": "kernel", "kernel": "contrastive_forward_sym_bf16", "ctas_per_sm": 2, "theoretical_occupancy": 0.25,
     "shapes": [{"n": 8192, "d": 512, "est_time_us": 95.0, "bound": "smem", "warp_instructions": 1.0,
                 "mma_instructions": 1.0, "mufu_instructions": 1.0, "smem_wavefronts": 1.0, "smem_wavefronts_min": 1.0}]},
    {"kind": "target", "what": "ignored"},
]


class Parsing(unittest.TestCase):
    def test_csv_units_and_launches(self):
        units, launches = nc.read_ncu_csv(PROFILE)
        self.assertEqual(units["gpu__time_duration.sum"], "usecond")
        self.assertEqual(len(launches), 4)
        self.assertEqual(nc.kernel_name(launches[1]["Kernel Name"]), "contrastive_backward_bf16_g1")
        self.assertEqual(nc.kernel_name("void k<int>(int)"), "k")
        self.assertEqual(nc.number("2,000,000"), 2e6)
        self.assertIsNone(nc.number("n/a"))

    def test_time_units(self):
        rec = {"gpu__time_duration.sum": "95,500"}
        self.assertEqual(nc.figure(rec, {"gpu__time_duration.sum": "nsecond"}, "time")[0], 95.5)
        self.assertEqual(nc.figure(rec, {"gpu__time_duration.sum": "msecond"}, "time")[0], 95.5e6)
        self.assertEqual(nc.figure(rec, {}, "time")[0], 95.5, "no units row: ncu's default, nanoseconds")

    def test_shared_wavefronts_total_or_parts(self):
        self.assertEqual(nc.figure({"l1tex__data_pipe_lsu_wavefronts_mem_shared.sum": "7"}, {}, "smem_wavefronts"),
                         (7.0, "l1tex__data_pipe_lsu_wavefronts_mem_shared.sum"))
        v, metric = nc.figure({"l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum": "5",
                               "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum": "2"}, {}, "smem_wavefronts")
        self.assertEqual((v, metric), (7.0, nc.SMEM_OP_PREFIX + "*.sum"))
        self.assertEqual(nc.figure({}, {}, "smem_wavefronts"), (None, None))

    def test_bad_input(self):
        with self.assertRaises(nc.InputError):
            nc.read_ncu_csv("no header here\n1,2,3\n")
        with self.assertRaises(nc.InputError):
            nc.read_model('{"kind": "target"}\n')
        with self.assertRaises(nc.InputError):
            nc.read_model("{not json\n")


class Table(unittest.TestCase):
    def table(self, n=8192, d=128):
        units, launches = nc.read_ncu_csv(PROFILE)
        model = nc.read_model("\n".join(json.dumps(r) for r in MODEL))
        return nc.render(*nc.compare(model, [(n, d, units, launches)]))

    def test_rows_against_the_model(self):
        text = self.table()
        row = next(line for line in text.splitlines() if line.startswith("| contrastive_backward_bf16_g1"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        self.assertEqual(cells[3], "2", "two launches, the last one shown")
        self.assertEqual(cells[4], "99.0 / 88.7 (smem) (1.12x)")
        self.assertEqual(cells[5], "25.0 % / 12.5 %")
        self.assertEqual(cells[6], "2,100,000 / 2,000,000 (1.05x)")
        self.assertEqual(cells[7], "1,900,000 / 2,200,000 (1,800,000) between")
        self.assertEqual(cells[8], "70,000 / 65,536 (1.07x)")
        self.assertEqual(cells[9], "not collected")
        self.assertIn("`sm__inst_executed_pipe_xu.sum`", text)

    def test_kernels_without_an_estimate_are_noted(self):
        text = self.table()
        self.assertIn("contrastive_reduce at N = 8192, D = 128: profiled, but the model has no estimate there", text)
        self.assertIn("contrastive_forward_sym_bf16 at N = 8192, D = 128", text, "the model has it at D = 512 only")

    def test_floor_and_above(self):
        units, launches = nc.read_ncu_csv(PROFILE)
        model = nc.read_model("\n".join(json.dumps(r) for r in MODEL))
        launches[2]["l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum"] = "100"
        text = nc.render(*nc.compare(model, [(8192, 128, units, launches)]))
        self.assertIn("(1,800,000) below the floor", text)

    def test_command_line(self):
        with tempfile.TemporaryDirectory() as tmp:
            prof, model, out = (os.path.join(tmp, f) for f in ("p.csv", "m.jsonl", "o.md"))
            with open(prof, "w") as f:
                f.write(PROFILE)
            with open(model, "w") as f:
                f.write("\n".join(json.dumps(r) for r in MODEL))
            with open(os.devnull, "w") as devnull:
                stdout, stderr, sys.stdout, sys.stderr = sys.stdout, sys.stderr, devnull, devnull
                try:
                    rc = nc.main(["--model", model, "--ncu", f"{prof}:8192:128", "--out", out])
                    rc_missing = nc.main(["--model", model, "--ncu", f"{tmp}/none.csv:8192:128"])
                finally:
                    sys.stdout, sys.stderr = stdout, stderr
            self.assertEqual(rc, 0)
            with open(out) as f:
                self.assertIn("| contrastive_backward_bf16_g1 | 8192 | 128 | 2 |", f.read())
            self.assertEqual(rc_missing, 2)
        with self.assertRaises(SystemExit):
            with open(os.devnull, "w") as devnull:
                stderr, sys.stderr = sys.stderr, devnull
                try:
                    nc.main(["--model", "m", "--ncu", "no-shape.csv"])
                finally:
                    sys.stderr = stderr


if __name__ == "__main__":
    unittest.main()
