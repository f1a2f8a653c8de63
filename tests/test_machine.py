"""towerlite.machine.cpu_info: the CPU record every benchmark and report carries, read from
/proc/cpuinfo (fake ones here, for an AVX2-only AMD and an AMX Intel, then this machine's)."""

from __future__ import annotations

import os

import pytest

from towerlite.errors import TowerliteError
from towerlite.machine import HALT_POLL, RELEVANT_FLAGS, cpu_idle, cpu_info, set_halt_poll

AVX2_ONLY = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni
"""

SAPPHIRE = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_vnni avx512_bf16 avx_vnni amx_bf16 \
amx_tile amx_int8 amx_fp16
"""


def test_avx2_only_cpu_is_recorded_as_such(tmp_path):
    (tmp_path / "cpuinfo").write_text(AVX2_ONLY)
    info = cpu_info(tmp_path / "cpuinfo")
    assert set(info) == {"cpu_model", "cpu_flags", "cores"}
    assert info["cpu_model"] == "AMD EPYC"
    assert info["cpu_flags"] == ["sse4_2", "avx", "avx2", "fma", "f16c"]  # irrelevant ones left out
    assert info["cores"] == os.cpu_count()


def test_vnni_and_amx_flags_are_kept_in_a_fixed_order(tmp_path):
    (tmp_path / "cpuinfo").write_text(SAPPHIRE)
    flags = cpu_info(tmp_path / "cpuinfo")["cpu_flags"]
    assert flags[:4] == ["sse4_2", "avx", "avx2", "fma"]
    assert {"avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile", "amx_bf16"} <= set(flags)
    assert flags[-1] == "amx_fp16"  # an amx_* flag not in the list is kept too, after it
    assert cpu_info(tmp_path / "cpuinfo")["cpu_model"].startswith("Intel(R) Xeon(R)")


def test_no_cpuinfo_still_gives_a_record(tmp_path):
    info = cpu_info(tmp_path / "missing")
    assert info["cpu_flags"] == [] and info["cpu_model"] and info["cores"] == os.cpu_count()


def test_this_machine():
    info = cpu_info()
    assert info["cpu_model"] and info["cores"] >= 1
    assert set(info["cpu_flags"]) <= set(RELEVANT_FLAGS) | {f for f in info["cpu_flags"]
                                                           if f.startswith("amx")}
    if os.path.exists("/proc/cpuinfo") and "avx2" in open("/proc/cpuinfo").read():
        assert "avx2" in info["cpu_flags"]


def test_cpu_idle_reads_a_guests_halt_polling(tmp_path):
    (tmp_path / "devices/system/cpu/cpuidle").mkdir(parents=True)
    (tmp_path / "devices/system/cpu/cpuidle/current_driver").write_text("haltpoll\n")
    assert cpu_idle(tmp_path) == {"cpuidle_driver": "haltpoll", "halt_poll_ns": None}
    (tmp_path / HALT_POLL).parent.mkdir(parents=True)
    (tmp_path / HALT_POLL).write_text("200000\n")
    assert cpu_idle(tmp_path) == {"cpuidle_driver": "haltpoll", "halt_poll_ns": 200_000}
    assert cpu_idle(tmp_path / "missing") == {"cpuidle_driver": None, "halt_poll_ns": None}
    set_halt_poll(2_000_000, tmp_path)
    assert cpu_idle(tmp_path)["halt_poll_ns"] == 2_000_000
    with pytest.raises(TowerliteError, match="haltpoll"):
        set_halt_poll(0, tmp_path / "missing")
    info = cpu_idle()  # this machine: whatever it has, in the same shape
    assert set(info) == {"cpuidle_driver", "halt_poll_ns"}


def test_package_versions_name_installed_and_missing_packages():
    import platform

    import numpy

    from towerlite.machine import package_versions

    got = package_versions("numpy", "no-such-distribution-towerlite")
    assert got == {"python": platform.python_version(), "numpy": numpy.__version__,
                   "no-such-distribution-towerlite": None}
