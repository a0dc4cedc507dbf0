"""The compilation cache is keyed by the host CPU: a node never loads code compiled for another."""
import jax
import pytest

from sampler.core import precision

pytestmark = pytest.mark.timeout(60)

CPU = "processor\t: {i}\nmodel name\t: {model}\nflags\t\t: {flags}\ncpu MHz\t\t: {mhz}\n"


def _cpuinfo(tmp_path, name, model="AMD EPYC", flags="fpu sse sse2 avx avx2", cores=2):
    path = tmp_path / name
    path.write_text("\n".join(CPU.format(i=i, model=model, flags=flags, mhz=2000 + i) for i in range(cores)))
    return path


def test_host_fingerprint_follows_the_cpu_model_and_flags_only(tmp_path):
    base = precision.host_fingerprint(_cpuinfo(tmp_path, "a"))
    assert len(base) == 12
    assert precision.host_fingerprint(_cpuinfo(tmp_path, "b", cores=8)) == base          # core count, clock
    assert precision.host_fingerprint(_cpuinfo(tmp_path, "c", flags="fpu sse sse2 avx")) != base
    assert precision.host_fingerprint(_cpuinfo(tmp_path, "d", model="Intel Xeon")) != base
    assert len(precision.host_fingerprint(tmp_path / "missing")) == 12                     # platform fallback


def test_configure_jax_puts_the_cache_in_a_per_cpu_directory(tmp_path, monkeypatch):
    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "xla"))
    try:
        precision.configure_jax("float64")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla" / f"cpu-{precision.host_fingerprint()}")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


@pytest.mark.timeout(180)
def test_a_warm_compilation_cache_loads_without_alarming_lines(tmp_path):
    """Two processes compile the same program with one cache directory: the second loads it from the
    cache (the directory holds its entry) and prints nothing on stderr, in particular not XLA's
    "... could lead to execution errors such as SIGILL" lines (openxla/xla issue 44565)."""
    import os
    import subprocess
    import sys
    code = ("import sampler, jax, jax.numpy as jnp\n"
            "from sampler.core.precision import configure_jax\n"
            "configure_jax('float64')\n"
            "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
            "f = jax.jit(lambda x: jnp.linalg.cholesky(x @ x.T + jnp.eye(8)).sum())\n"
            "print(float(f(jnp.ones((8, 8)))))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL")}
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "xla")
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr
    assert runs[0].stdout == runs[1].stdout
    assert any((tmp_path / "xla").rglob("*-cache")), list((tmp_path / "xla").rglob("*"))
    assert runs[1].stderr.strip() == "", runs[1].stderr
