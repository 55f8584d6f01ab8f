"""The C ABI as ctypes sees it: the #defines, struct layouts and function signatures of
include/contrastive_kernels.h. Hand-written, and held to the header by python/tests/test_abi.py,
which parses the header and fails when a constant, a struct field or a signature here differs
from it (a field added on the C side included). Standard library only.
"""

from __future__ import annotations

import ctypes

# Status codes.
CK_OK = 0
CK_ERR_INVALID_ARGUMENT = 1
CK_ERR_SHAPE = 2
CK_ERR_NO_DRIVER = 3
CK_ERR_NO_DEVICE = 4
CK_ERR_NOT_COMPILED = 5
CK_ERR_CUDA = 6
CK_ERR_INTERNAL = 7

# Dtypes.
CK_F32 = 0
CK_F16 = 1
CK_BF16 = 2

CK_GEOMETRY_SELF = 0
CK_GEOMETRY_PAIRWISE = 1
CK_REDUCTION_MEAN = 0
CK_REDUCTION_SUM = 1
CK_REDUCTION_PER_ANCHOR = 2
CK_EMPTY_POSITIVES_ERROR = 0
CK_EMPTY_POSITIVES_ZERO = 1

CK_LOSS_NT_XENT = 0
CK_LOSS_SUPCON = 1
CK_LOSS_FIRM = 2
CK_LOSS_FIRM_PAIRWISE = 3
CK_LOSS_OECL = 4
CK_LOSS_OUTLIER_EXPOSURE = 5
CK_LOSS_CLUSTER_AWARE = 6

CK_SCORE_KNN_DISTANCE = 0
CK_SCORE_MEAN_TOPK = 1
CK_SCORE_NORM_WEIGHTED_MEAN_TOPK = 2
CK_SCORE_CSI = 3

# Row roles (CkLossInputs.role; kernels/params/contrastive.h): not #defines of the C ABI header.
ROLE_ANCHOR, ROLE_NEGATIVE_ONLY, ROLE_NORM_PENALTY_ONLY = 0, 1, 2


def defines() -> dict:
    """Every CK_* constant above, by name (what the header test compares)."""
    return {k: v for k, v in globals().items() if k.startswith("CK_") and isinstance(v, int)}


class CkLossConfig(ctypes.Structure):
    _fields_ = [
        ("geometry", ctypes.c_int32),
        ("temperature", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("use_labels", ctypes.c_int32),
        ("reduction", ctypes.c_int32),
        ("empty_positives", ctypes.c_int32),
        ("norm_penalty", ctypes.c_float),
    ]


class CkLossInputs(ctypes.Structure):
    _fields_ = [
        ("dtype", ctypes.c_int32),
        ("n", ctypes.c_int64),
        ("d", ctypes.c_int64),
        ("features", ctypes.c_void_p),
        ("instance", ctypes.c_void_p),
        ("label", ctypes.c_void_p),
        ("role", ctypes.c_void_p),
        ("weight", ctypes.c_void_p),
        ("n_keys", ctypes.c_int64),
        ("keys", ctypes.c_void_p),
        ("key_instance", ctypes.c_void_p),
        ("key_label", ctypes.c_void_p),
        ("n_centers", ctypes.c_int64),
        ("centers", ctypes.c_void_p),
        ("proto_of", ctypes.c_void_p),
        ("anchor_rows", ctypes.c_int64),
    ]


class CkDetectionReport(ctypes.Structure):
    _fields_ = [("auroc", ctypes.c_double), ("aupr", ctypes.c_double), ("fpr_at_95_tpr", ctypes.c_double)]


STRUCTS = {"CkLossConfig": CkLossConfig, "CkLossInputs": CkLossInputs, "CkDetectionReport": CkDetectionReport}

_P = ctypes.c_void_p
_I32, _I64, _F32, _F64 = ctypes.c_int32, ctypes.c_int64, ctypes.c_float, ctypes.c_double
_CFG = ctypes.POINTER(CkLossConfig)
_IN = ctypes.POINTER(CkLossInputs)
_PF32 = ctypes.POINTER(ctypes.c_float)
_PF64 = ctypes.POINTER(ctypes.c_double)

# name: (argument types, return type). Typed pointers where the header has one (float *, double *,
# struct pointers); every other pointer (void *, int32_t *, uint8_t *) is c_void_p, which takes
# the integers torch's data_ptr() gives.
SIGNATURES = {
    "ck_version": ([], ctypes.c_char_p),
    "ck_last_error": ([], ctypes.c_char_p),
    "ck_status_name": ([_I32], ctypes.c_char_p),
    "ck_device_check": ([_I32], _I32),
    "ck_loss_preset": ([_I32, _F32, _F32, _CFG], _I32),
    "ck_contrastive_forward": ([_I32, _P, _CFG, _IN, _P, _P, _P, _P, _PF32], _I32),
    "ck_contrastive_backward": ([_I32, _P, _CFG, _IN, _P, _P, _P, _P, _P, _P], _I32),
    "ck_l2_normalize": ([_I32, _P, _I32, _P, _I64, _I64, _I32, _P, _P], _I32),
    "ck_similarity": ([_I32, _P, _I32, _P, _I64, _P, _I64, _I64, _I32, _P, _F32, _I32, _F32], _I32),
    "ck_topk": ([_I32, _P, _I32, _P, _I64, _P, _I64, _I64, _I64, _I32, _I64, _P, _P], _I32),
    "ck_detection_report": ([_PF64, _I64, _PF64, _I64, ctypes.POINTER(CkDetectionReport)], _I32),
    "ck_topk_score": ([_I32, _P, _I64, _I64, _I64, _P, _P], _I32),
    "ck_norm_score": ([_P, _I64, _I64, _P], _I32),
    "ck_mcod_score": ([_P, _I64, _I64, _P, _I64, _F64, _P], _I32),
    # The host entry points (the library's f64 CPU oracle on host memory; same checks and errors).
    "ck_contrastive_forward_host": ([_CFG, _IN, _P, _P, _P, _P], _I32),
    "ck_contrastive_backward_host": ([_CFG, _IN, _P, _P, _P, _P, _P, _P], _I32),
    "ck_topk_host": ([_I32, _P, _I64, _P, _I64, _I64, _I64, _I32, _I64, _P, _P], _I32),
}

# Functions a library may lack (built before they existed): bound when present, and a call without
# them fails with a message saying to rebuild.
OPTIONAL = {"ck_contrastive_forward_host", "ck_contrastive_backward_host", "ck_topk_host"}
