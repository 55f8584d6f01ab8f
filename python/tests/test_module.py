"""The Python module without PyTorch or a GPU: the library loads, its no-device status and
argument errors come through, presets match the Rust ones, and the tensor checks reject bad input."""

import os
import sys
import unittest
from pathlib import Path

if os.environ.get("CK_TEST_INSTALLED") != "1":  # CI's venv run tests the installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contrastive_kernels as ck  # noqa: E402


class FakeDevice:
    def __init__(self, kind="cuda", index=0):
        self.type, self.index = kind, index

    def __eq__(self, other):
        return (self.type, self.index) == (other.type, other.index)

    def __repr__(self):
        return f"{self.type}:{self.index}"


class FakeTensor:
    """What the checks read of a torch.Tensor."""

    def __init__(self, shape, dtype="torch.float32", device=None, contiguous=True, ptr=4096):
        self.shape, self.dtype = tuple(shape), dtype
        self.device = device or FakeDevice()
        self._contiguous, self._ptr = contiguous, ptr

    def is_contiguous(self):
        return self._contiguous

    def data_ptr(self):
        return self._ptr


def ids(n):
    return FakeTensor((n,), "torch.int32")


class LibraryTests(unittest.TestCase):
    def test_version_and_device_check(self):
        self.assertRegex(ck.version(), r"^\d+\.\d+\.\d+")
        self.assertEqual(ck.__version__, ck.version())  # the package's version is the crate's
        why = ck.device_check(0)
        if why is not None:  # no GPU here: the documented statuses
            self.assertIn(ck.STATUS_NAMES[why.status], {"CK_ERR_NO_DRIVER", "CK_ERR_NO_DEVICE", "CK_ERR_NOT_COMPILED"})
            self.assertTrue(why.message)

    def test_presets_match_the_rust_constructors(self):
        supcon = ck.LossConfig.preset("supcon", 0.1, 0.07)
        self.assertAlmostEqual(supcon.scale, 0.1 / 0.07, places=6)
        self.assertTrue(supcon.use_labels)
        self.assertEqual(ck.LossConfig.preset("firm_pairwise", 0.2).geometry, "pairwise")
        self.assertAlmostEqual(ck.LossConfig.preset("oecl", 0.5, 0.1).norm_penalty, 0.1, places=6)
        self.assertEqual(ck.LossConfig.preset("nt_xent", 0.5, reduction="sum").reduction, "sum")
        with self.assertRaises(ValueError):
            ck.LossConfig.preset("nope", 0.5)

    def test_library_rejects_bad_temperature(self):
        with self.assertRaises(ck.CkError) as e:
            ck.LossConfig.preset("nt_xent", -1.0)
        self.assertEqual(e.exception.status, 1)
        self.assertIn("temperature", e.exception.message)

    def test_forward_with_null_inputs_is_an_argument_error(self):
        lib = ck.load_library()
        config = ck.LossConfig.preset("nt_xent", 0.5).to_c()
        status = lib.ck_contrastive_forward(0, None, ck.ctypes.byref(config), None, None, None, None, None, None)
        self.assertEqual(ck.STATUS_NAMES[status], "CK_ERR_INVALID_ARGUMENT")
        self.assertIn("inputs", lib.ck_last_error().decode())


class MetricsTests(unittest.TestCase):
    def test_detection_report_by_hand(self):
        # Pairs (outlier > inlier): 0.25 beats 0.1 and 0.2, 0.9 beats all three: 5 of 6.
        r = ck.detection_report([0.1, 0.2, 0.3], [0.25, 0.9])
        self.assertAlmostEqual(r["auroc"], 5 / 6, places=12)
        with self.assertRaises(ck.CkError) as e:
            ck.detection_report([], [0.5])
        self.assertIn("inlier_scores", e.exception.message)


class TensorCheckTests(unittest.TestCase):
    def setUp(self):
        self.nt_xent = ck.LossConfig.preset("nt_xent", 0.5)
        self.supcon = ck.LossConfig.preset("supcon", 0.1, 0.07)

    def test_cpu_tensors_are_accepted(self):
        cpu = FakeDevice("cpu", None)
        inputs = ck.describe_inputs(self.nt_xent, FakeTensor((8, 16), device=cpu), FakeTensor((8,), "torch.int32", cpu))
        self.assertEqual((inputs.n, inputs.d), (8, 16))

    def test_good_inputs_are_described(self):
        inputs = ck.describe_inputs(self.nt_xent, FakeTensor((8, 16), "torch.bfloat16"), ids(8))
        self.assertEqual((inputs.dtype, inputs.n, inputs.d, inputs.features), (ck.CK_BF16, 8, 16, 4096))
        self.assertIsNone(inputs.label)

    def test_errors_name_the_argument(self):
        x = FakeTensor((8, 16))
        cases = [
            (lambda: ck.describe_inputs(self.nt_xent, FakeTensor((8, 16), "torch.float64"), ids(8)), "features"),
            (lambda: ck.describe_inputs(self.nt_xent, FakeTensor((8,)), ids(8)), "features"),
            (lambda: ck.describe_inputs(self.nt_xent, FakeTensor((8, 16), device=FakeDevice("meta")), ids(8)), "features"),
            (lambda: ck.describe_inputs(self.nt_xent, FakeTensor((8, 16), contiguous=False), ids(8)), "features"),
            (lambda: ck.describe_inputs(self.nt_xent, x, ids(7)), "instance"),
            (lambda: ck.describe_inputs(self.nt_xent, x, FakeTensor((8,), "torch.int64")), "instance"),
            (lambda: ck.describe_inputs(self.nt_xent, x, FakeTensor((8,), "torch.int32", FakeDevice("cuda", 1))), "instance"),
            (lambda: ck.describe_inputs(self.supcon, x, ids(8)), "label"),
            (lambda: ck.describe_inputs(self.nt_xent, x, ids(8), role=FakeTensor((8,), "torch.int32")), "role"),
            (lambda: ck.describe_inputs(self.nt_xent, x, ids(8), keys=FakeTensor((8, 16))), "keys"),
            (lambda: ck.describe_inputs(ck.LossConfig.preset("firm_pairwise", 0.2), x, ids(8), label=ids(8)), "keys"),
            (lambda: ck.describe_inputs(self.nt_xent, x, ids(8), centers=FakeTensor((3, 16))), "proto_of"),
            (lambda: ck.describe_inputs(self.nt_xent, x, ids(8), centers=FakeTensor((3, 15)), proto_of=ids(8)), "centers"),
        ]
        for run, arg in cases:
            with self.assertRaises((ValueError, TypeError)) as e:
                run()
            self.assertTrue(str(e.exception).startswith(arg), f"{arg}: {e.exception}")

    def test_bad_enumerations(self):
        with self.assertRaises(ValueError):
            ck.LossConfig(reduction="median").to_c()


if __name__ == "__main__":
    unittest.main()
