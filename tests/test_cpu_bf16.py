"""Whether ``--dtype bf16`` pays on this CPU: read from its flags, told by ``doctor``."""

import pytest
from typer.testing import CliRunner

from kcli.cli import app
from kcli.pipelines.devices import bf16_advice, cpu_flags, fast_bf16

SKYLAKE = {"fpu", "sse2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl"}


@pytest.mark.parametrize("flags, found", [
    (SKYLAKE, None),
    ({"avx2", "fma"}, None),
    (SKYLAKE | {"avx512_bf16"}, "AVX512-BF16"),  # Cooper Lake, Zen 4
    (SKYLAKE | {"avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}, "AMX-BF16"),  # Sapphire Rapids
    ({"avx512bf16"}, None),  # a near miss is no match
])
def test_fast_bf16_from_flags(flags, found):
    assert fast_bf16(flags) == found
    advice = bf16_advice(flags)
    assert ("about twice as fast" in advice) == (found is not None)
    assert ("keep the default fp32" in advice) == (found is None)


def test_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16", "amx_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == set()
    assert "unknown" in bf16_advice(set())


def test_doctor_says_whether_bf16_pays(monkeypatch):
    from kcli.pipelines import devices

    monkeypatch.setattr(devices, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": SKYLAKE | {"avx512_bf16"})
    out = CliRunner().invoke(app, ["doctor"], env={"COLUMNS": "240"}).output
    assert "AVX512-BF16: --dtype bf16 runs about twice as fast" in out
    monkeypatch.setattr(devices, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": SKYLAKE)
    out = CliRunner().invoke(app, ["doctor"], env={"COLUMNS": "240"}).output
    assert "keep the default fp32" in out
