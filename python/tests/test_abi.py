"""The ctypes side (contrastive_kernels/_abi.py) against include/contrastive_kernels.h, parsed
here: every #define, every struct field (name, type, order; so a field added in C fails), and
every declared function's parameter types. Standard library only; needs the repository's header."""

import ctypes
import os
import re
import sys
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if os.environ.get("CK_TEST_INSTALLED") != "1":
    sys.path.insert(0, str(REPO / "python"))

from contrastive_kernels import _abi  # noqa: E402

HEADER = REPO / "include" / "contrastive_kernels.h"

SCALARS = {
    "int32_t": ctypes.c_int32,
    "int64_t": ctypes.c_int64,
    "uint64_t": ctypes.c_uint64,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
    "size_t": ctypes.c_size_t,
}


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def parse_header(text: str):
    code = strip_comments(text)
    defines = {m.group(1): int(m.group(2)) for m in re.finditer(r"^#define\s+(CK_\w+)\s+(-?\d+)\s*$", code, re.M)}
    structs = {}
    for m in re.finditer(r"typedef struct (\w+) \{(.*?)\} \1;", code, re.S):
        fields = []
        for decl in m.group(2).split(";"):
            decl = " ".join(decl.split())
            if decl:
                fm = re.match(r"(.+?)\s*(\**)\s*(\w+)$", decl)
                fields.append((fm.group(3), fm.group(1).replace("const ", "").strip(), len(fm.group(2))))
        structs[m.group(1)] = fields
    functions = {}
    for m in re.finditer(r"^([\w ]+?\**)\s*(ck_\w+)\((.*?)\);", code, re.M | re.S):
        params = " ".join(m.group(3).split())
        args = []
        if params != "void":
            for p in params.split(","):
                pm = re.match(r"(.+?)\s*(\**)\s*(\w+)$", p.strip())
                args.append((pm.group(3), pm.group(1).replace("const ", "").replace("struct ", "").strip(), len(pm.group(2))))
        functions[m.group(2)] = args
    return defines, structs, functions


def acceptable(ctype, c_type: str, stars: int) -> bool:
    """Does the ctypes declaration pass this C parameter correctly?"""
    if stars == 0:
        return ctype is SCALARS.get(c_type)
    if stars == 1 and c_type in _abi.STRUCTS:
        return ctype is ctypes.POINTER(_abi.STRUCTS[c_type])
    if c_type == "char" and stars == 1:
        return ctype in (ctypes.c_char_p, ctypes.c_void_p)
    if ctype is ctypes.c_void_p:
        return True  # any data pointer
    return stars == 1 and c_type in SCALARS and ctype is ctypes.POINTER(SCALARS[c_type])


class HeaderTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not HEADER.exists():
            raise unittest.SkipTest(f"{HEADER} not found (an installed package without the repository)")
        cls.defines, cls.structs, cls.functions = parse_header(HEADER.read_text())

    def test_the_parser_sees_the_header(self):
        self.assertGreater(len(self.defines), 20)
        self.assertIn("CkLossInputs", self.structs)
        self.assertIn("ck_contrastive_forward", self.functions)

    def test_defines_match(self):
        self.assertEqual(_abi.defines(), self.defines)

    def test_struct_layouts_match(self):
        self.assertEqual(set(_abi.STRUCTS), set(self.structs))
        for name, fields in self.structs.items():
            py = _abi.STRUCTS[name]._fields_
            self.assertEqual([f[0] for f in py], [f[0] for f in fields], f"{name}: field names / order")
            for (fname, ctype), (_, c_type, stars) in zip(py, fields):
                if stars:
                    self.assertIs(ctype, ctypes.c_void_p, f"{name}.{fname}: a pointer is c_void_p")
                else:
                    self.assertIs(ctype, SCALARS[c_type], f"{name}.{fname}: {c_type}")

    def test_function_signatures_match(self):
        for name, (argtypes, _) in _abi.SIGNATURES.items():
            if name not in self.functions:
                self.assertIn(name, _abi.OPTIONAL, f"{name}: declared in _abi but not in the header")
                continue
            params = self.functions[name]
            self.assertEqual(len(argtypes), len(params), f"{name}: parameter count")
            for i, (ctype, (pname, c_type, stars)) in enumerate(zip(argtypes, params)):
                self.assertTrue(acceptable(ctype, c_type, stars), f"{name}: parameter {i} `{pname}` is {c_type}{'*' * stars}, declared {ctype}")

    def test_row_roles_match_the_kernels(self):
        params = REPO / "kernels" / "params" / "contrastive.h"
        found = dict(re.findall(r"^#define CK_CONTRASTIVE_(ROLE_\w+)\s+(\d+)", params.read_text(), re.M))
        self.assertEqual({k: int(v) for k, v in found.items()}, {k: getattr(_abi, k) for k in ("ROLE_ANCHOR", "ROLE_NEGATIVE_ONLY", "ROLE_NORM_PENALTY_ONLY")})

    def test_a_field_added_in_c_is_caught(self):
        text = HEADER.read_text().replace("  float norm_penalty;\n} CkLossConfig;", "  float norm_penalty;\n  int32_t extra;\n} CkLossConfig;")
        _, structs, _ = parse_header(text)
        self.assertNotEqual([f[0] for f in _abi.CkLossConfig._fields_], [f[0] for f in structs["CkLossConfig"]])


if __name__ == "__main__":
    unittest.main()
