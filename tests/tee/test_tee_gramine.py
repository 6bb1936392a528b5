"""Gramine manifest: valid TOML, safe defaults, options honoured, no key or certificate baked in."""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.workspaces import edit_plan, make_workspace

import bastion
from bastion.tee.gramine import (
    ManifestError,
    ManifestOptions,
    render_manifest,
    render_manifest_template,
)
from bastion.tee.gramine_build import (
    GramineBuildError,
    GramineNotInstalled,
    build_steps,
    missing_tools,
    run_build_steps,
)
from bastion.tee.runtime import GramineInstall, PythonRuntime, RuntimeProbeError
from bastion.tee.workspace_files import select_workspace_files
from bastion.workspace.templates import create_workspace

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

SECRET_NAMES = (
    "pki/ca.key",
    "pki/ca.crt",
    "pki/aggregator.key",
    "pki/aggregator.crt",
    "pki/site-1.key",
    "pki/site-1.crt",
    "model-owner.pem",
    "notes/token",
)


@pytest.fixture(scope="session")
def runtime() -> PythonRuntime:
    return PythonRuntime.probe()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A real workspace (template, plan, PKI with keys) plus the clutter users leave around."""
    ws = make_workspace(tmp_path, collaborators=1, initialize=False)
    for name, text in {
        "model-owner.pem": "-----BEGIN EC PRIVATE KEY-----\n",
        "notes/token": "junk\n-----BEGIN OPENSSH PRIVATE KEY-----\n",
        ".env": "PASSWORD=hunter2\n",
        "__pycache__/task.cpython-311.pyc": "bytecode",
        "logs/metrics.jsonl": "{}\n",
    }.items():
        path = ws / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return ws


def options(workspace: Path, runtime: PythonRuntime, **changes: Any) -> ManifestOptions:
    base = ManifestOptions(workspace=workspace, role="aggregator", python=runtime)
    return replace(base, **changes)


def parse(text: str) -> dict[str, Any]:
    return tomllib.loads(text)


def test_renders_valid_toml_with_production_defaults(
    workspace: Path, runtime: PythonRuntime
) -> None:
    manifest = parse(render_manifest(options(workspace, runtime)))
    sgx = manifest["sgx"]
    assert sgx["debug"] is False
    assert sgx["remote_attestation"] == "dcap"
    assert sgx["enclave_size"] == "8G" and sgx["max_threads"] == 64
    assert sgx["isvprodid"] == 0 and sgx["isvsvn"] == 0
    assert sgx["file_check_policy"] == "strict"
    assert manifest["loader"]["log_level"] == "error"
    assert "insecure__use_cmdline_argv" not in manifest["loader"]


def test_options_reach_the_manifest(workspace: Path, runtime: PythonRuntime) -> None:
    text = render_manifest(
        options(
            workspace,
            runtime,
            debug=True,
            enclave_size="16G",
            max_threads=128,
            isv_prod_id=7,
            isv_svn=3,
        )
    )
    sgx = parse(text)["sgx"]
    assert sgx["debug"] is True
    assert (sgx["enclave_size"], sgx["max_threads"]) == ("16G", 128)
    assert (sgx["isvprodid"], sgx["isvsvn"]) == (7, 3)


def test_entrypoint_is_the_interpreter_and_argv_is_fixed_by_role(
    workspace: Path, runtime: PythonRuntime
) -> None:
    aggregator = parse(render_manifest(options(workspace, runtime)))
    python = str(runtime.executable)
    assert aggregator["libos"]["entrypoint"] == python
    assert aggregator["loader"]["argv"] == [python, "-m", "bastion", "aggregator", "start"]
    assert aggregator["fs"]["start_dir"] == str(workspace.resolve())
    assert f"file:{python}" in aggregator["sgx"]["trusted_files"]

    site = parse(render_manifest(options(workspace, runtime, role="collaborator", name="site-1")))
    assert site["loader"]["argv"][3:] == ["collaborator", "start", "site-1"]
    with pytest.raises(ManifestError, match="pass name="):
        render_manifest(options(workspace, runtime, role="collaborator"))


def test_environment_is_minimal_and_finds_the_installed_packages(
    workspace: Path, runtime: PythonRuntime
) -> None:
    env = parse(render_manifest(options(workspace, runtime)))["loader"]["env"]
    assert set(env) == {
        "LD_LIBRARY_PATH",
        "PYTHONPATH",
        "PYTHONNOUSERSITE",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONSAFEPATH",
        "HOME",
        "OMP_NUM_THREADS",
    }
    assert env["LD_LIBRARY_PATH"].startswith("/lib:")
    bastion_src = Path(bastion.__path__[0]).resolve().parent
    assert str(bastion_src) in env["PYTHONPATH"].split(":")


def test_no_key_or_certificate_is_trusted_or_allowed(
    workspace: Path, runtime: PythonRuntime
) -> None:
    for debug in (False, True):
        text = render_manifest(
            options(workspace, runtime, debug=debug, data_dir=workspace / "logs")
        )
        for name in SECRET_NAMES:
            assert str(workspace.resolve() / name) not in text
        assert ".key" not in text and ".crt" not in text and ".pem" not in text
        sgx = parse(text)["sgx"]
        pki = str(workspace.resolve() / "pki")
        for uri in sgx["trusted_files"] + sgx["allowed_files"]:
            assert not uri.removeprefix("file:").startswith(pki)


def test_workspace_code_and_plan_are_trusted_and_clutter_is_not(
    workspace: Path, runtime: PythonRuntime
) -> None:
    ws = workspace.resolve()
    trusted = parse(render_manifest(options(workspace, runtime)))["sgx"]["trusted_files"]
    for name in ("plan.yaml", "requirements.txt", "task.py"):
        assert f"file:{ws / name}" in trusted
    for name in (".env", "__pycache__/task.cpython-311.pyc", "logs/metrics.jsonl"):
        assert f"file:{ws / name}" not in trusted

    selection = select_workspace_files(workspace)
    reasons = {path.relative_to(ws).as_posix(): why for path, why in selection.excluded}
    assert reasons["pki"] == "key or certificate directory"
    assert "PEM" in reasons["notes/token"] and reasons[".env"] == "hidden file"
    assert {p.relative_to(ws).as_posix() for p in selection.secrets} >= {
        "pki",
        "model-owner.pem",
        "notes/token",
    }


def test_checkpoints_and_pki_are_sealed_and_data_and_logs_are_allowed(
    workspace: Path, runtime: PythonRuntime, tmp_path: Path
) -> None:
    ws = workspace.resolve()
    data = tmp_path / "site-data"
    data.mkdir()
    manifest = parse(render_manifest(options(workspace, runtime, data_dir=data)))
    mounts = {mount["path"]: mount for mount in manifest["fs"]["mounts"]}
    assert mounts[str(ws / "save")] == {
        "type": "encrypted",
        "path": str(ws / "save"),
        "uri": f"file:{ws / 'save'}",
        "key_name": "_sgx_mrsigner",
    }
    assert mounts[str(ws / "pki")]["type"] == "encrypted"
    assert mounts[str(ws / "pki")]["uri"] == "file:/secrets"
    assert mounts["/tmp"] == {"type": "tmpfs", "path": "/tmp"}
    allowed = manifest["sgx"]["allowed_files"]
    assert f"file:{data.resolve()}/" in allowed and f"file:{ws / 'logs'}/" in allowed
    assert not any(uri.removeprefix("file:").startswith(str(ws / "save")) for uri in allowed)


def test_directories_follow_the_plan(workspace: Path, runtime: PythonRuntime) -> None:
    edit_plan(
        workspace,
        {"output": {"checkpoints": "ckpt", "logs": "runlogs"}, "network": {"pki_dir": "ids"}},
    )
    ws = workspace.resolve()
    manifest = parse(render_manifest(options(workspace, runtime)))
    mounts = {mount["path"]: mount for mount in manifest["fs"]["mounts"]}
    assert mounts[str(ws / "ckpt")]["type"] == "encrypted"
    assert mounts[str(ws / "ids")]["uri"] == "file:/secrets"
    assert f"file:{ws / 'runlogs'}/" in manifest["sgx"]["allowed_files"]


def test_a_plaintext_initial_checkpoint_cannot_be_sealed(
    tmp_path: Path, runtime: PythonRuntime
) -> None:
    initialized = make_workspace(tmp_path, collaborators=1, initialize=True)
    with pytest.raises(ManifestError, match="is plaintext, but the checkpoints directory"):
        render_manifest(options(initialized, runtime))
    plain = parse(render_manifest(options(initialized, runtime, seal_checkpoints=False)))
    assert f"file:{initialized.resolve() / 'save'}/" in plain["sgx"]["allowed_files"]


def test_mounts_put_parents_before_children(workspace: Path, runtime: PythonRuntime) -> None:
    paths = [m["path"] for m in parse(render_manifest(options(workspace, runtime)))["fs"]["mounts"]]
    for i, path in enumerate(paths):
        for later in paths[i + 1 :]:
            assert not Path(path).is_relative_to(later) or path == later


def test_a_trusted_directory_holding_keys_is_refused(
    workspace: Path, runtime: PythonRuntime
) -> None:
    leaky = replace(runtime, path_entries=(*runtime.path_entries, workspace.resolve()))
    with pytest.raises(ManifestError, match="contains .*pki"):
        render_manifest(options(workspace, leaky))
    with pytest.raises(ManifestError, match="contains"):
        render_manifest(options(workspace, runtime, data_dir=workspace))


def test_template_is_the_manifest_with_gramine_paths_as_jinja(
    workspace: Path, runtime: PythonRuntime
) -> None:
    install = GramineInstall(Path("/opt/gramine/lib"))
    opts = options(workspace, runtime, gramine=install)
    template = render_manifest_template(opts)
    assert 'loader.entrypoint.uri = "file:{{ gramine.libos }}"' in template
    assert '{ path = "/lib", uri = "file:{{ gramine.runtimedir() }}" }' in template

    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    gramine = {"libos": install.libos, "runtimedir": lambda libc="glibc": install.runtime_dir}
    rendered = env.from_string(template).render(gramine=gramine)
    assert parse(rendered) == parse(render_manifest(opts))


def test_paths_with_quotes_and_backslashes_survive(tmp_path: Path, runtime: PythonRuntime) -> None:
    odd = tmp_path / 'we"ird\\ws'
    create_workspace(odd, "numpy_logreg_digits")
    manifest = parse(render_manifest(options(odd, runtime)))
    assert manifest["fs"]["start_dir"] == str(odd.resolve())
    assert f"file:{odd.resolve() / 'plan.yaml'}" in manifest["sgx"]["trusted_files"]

    jinja_like = tmp_path / "{{ws}}"
    jinja_like.mkdir()
    with pytest.raises(ManifestError, match="Jinja markup"):
        render_manifest_template(options(jinja_like, runtime))
    with pytest.raises(ManifestError, match="Jinja markup"):
        render_manifest_template(options(odd, runtime, args=("aggregator", "start", "{% x %}")))


def test_plaintext_keys_in_the_sealed_pki_directory_are_refused(
    workspace: Path, runtime: PythonRuntime
) -> None:
    with pytest.raises(ManifestError, match="pki/.* is plaintext, but the secrets directory"):
        render_manifest(options(workspace, runtime, secrets_dir=workspace / "pki"))


def test_probing_a_missing_interpreter_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeProbeError, match="cannot run .*no-python"):
        PythonRuntime.probe(tmp_path / "no-python")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"enclave_size": "6G"}, "not a power of two"),
        ({"enclave_size": "8GB"}, "number with K, M or G"),
        ({"max_threads": 2}, "max_threads must be in 4..4096"),
        ({"compute_threads": 64}, "compute_threads must be in 1..63"),
        ({"isv_svn": 70000}, "isv_svn must be in 0..65535"),
        ({"isv_prod_id": -1}, "isv_prod_id must be in 0..65535"),
        ({"argv_passthrough": True}, "only for debug enclaves"),
        ({"args": ("aggregator", "start", "--insecure")}, "--insecure"),
        ({"sealing_key": "bad key"}, "sealing key name"),
        ({"role": "observer"}, "role must be one of"),
    ],
)
def test_unsafe_or_invalid_options_are_refused(
    change: dict[str, Any], message: str, workspace: Path, runtime: PythonRuntime
) -> None:
    with pytest.raises(ManifestError, match=message):
        render_manifest(options(workspace, runtime, **change))


def test_argv_passthrough_is_possible_for_debug_enclaves(
    workspace: Path, runtime: PythonRuntime
) -> None:
    loader = parse(render_manifest(options(workspace, runtime, debug=True, argv_passthrough=True)))[
        "loader"
    ]
    assert loader["insecure__use_cmdline_argv"] is True
    assert "argv" not in loader


def test_missing_workspace_is_refused(tmp_path: Path, runtime: PythonRuntime) -> None:
    with pytest.raises(ManifestError, match="is not a directory"):
        render_manifest(options(tmp_path / "nope", runtime))


def test_build_steps_are_the_gramine_command_lines(tmp_path: Path) -> None:
    steps = build_steps(key=Path("/keys/enclave-key.pem"))
    assert [step.shell() for step in steps] == [
        "gramine-manifest bastion.manifest.template bastion.manifest",
        "gramine-sgx-sign --manifest bastion.manifest --output bastion.manifest.sgx "
        "--key /keys/enclave-key.pem",
    ]


def test_building_without_gramine_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    steps = build_steps(key=tmp_path / "k.pem")
    assert missing_tools(steps) == ["gramine-manifest", "gramine-sgx-sign"]
    with pytest.raises(GramineNotInstalled, match="gramine-manifest, gramine-sgx-sign not found"):
        run_build_steps(steps, tmp_path)


def test_a_failing_build_step_reports_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Gramine's scripts run under its Python; this one answers the version probe with 1.9.
    python = bin_dir / "gramine-python"
    python.write_text('#!/bin/sh\nif [ "$1" = -c ]; then echo 1.9; exit 0; fi\nexec /bin/sh "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    for tool, body in {
        "gramine-manifest": 'cp "$1" "$2"',
        "gramine-sgx-sign": 'echo "error: cannot open /dev/sgx_enclave" >&2; exit 3',
    }.items():
        script = bin_dir / tool
        script.write_text(f"#!{python}\n{body}\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")
    (tmp_path / "bastion.manifest.template").write_text("x = 1\n")
    with pytest.raises(GramineBuildError, match="exit code 3 .*cannot open /dev/sgx_enclave"):
        run_build_steps(build_steps(key=tmp_path / "k.pem"), tmp_path)
    assert (tmp_path / "bastion.manifest").read_text() == "x = 1\n"


@pytest.mark.skipif(
    not (shutil.which("gramine-manifest") and shutil.which("gramine-sgx-sign")),
    reason="Gramine is not installed here; this runs the real gramine-manifest/gramine-sgx-sign",
)
def test_real_gramine_signs_the_manifest(
    workspace: Path, runtime: PythonRuntime, tmp_path: Path
) -> None:
    from bastion.tee.signing_key import generate_enclave_key, mrsigner_of
    from bastion.tee.sigstruct import read_sigstruct

    out = tmp_path / "enclave"
    out.mkdir()
    key = generate_enclave_key(tmp_path / "enclave-key.pem")
    template = render_manifest_template(options(workspace, runtime, isv_prod_id=5, isv_svn=2))
    (out / "bastion.manifest.template").write_text(template)
    run_build_steps(build_steps(key=tmp_path / "enclave-key.pem"), out)
    sig = read_sigstruct(out / "bastion.sig")
    sig.verify_signature()
    assert sig.mrsigner == mrsigner_of(key.public_key())
    assert (sig.isv_prod_id, sig.isv_svn, sig.debug) == (5, 2, False)
