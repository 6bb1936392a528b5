"""``bastion tee``: enclave signing keys, SIGSTRUCT inspection, Gramine manifests, and checking
SGX, TDX and SEV-SNP evidence by hand."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bastion.cli.console import console
from bastion.errors import BastionError
from bastion.tee.gramine import (
    DEFAULT_SECRETS_DIR,
    ManifestOptions,
    Role,
    render_manifest,
    render_manifest_template,
    workspace_selection,
)
from bastion.tee.gramine_build import MANIFEST_NAME, build_steps, run_build_steps, run_command
from bastion.tee.runtime import GramineInstall
from bastion.tee.signing_key import generate_enclave_key, mrsigner_of, write_enclave_json
from bastion.tee.sigstruct import Sigstruct, read_sigstruct

app = typer.Typer(
    help="SGX enclaves: signing keys, SIGSTRUCT inspection, Gramine manifests.",
    no_args_is_help=True,
)


@app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the PEM key.")] = Path(
        "enclave-key.pem"
    ),
    info: Annotated[
        Path | None,
        typer.Option(help="Where to write enclave.json (default: next to the key)."),
    ] = None,
    passphrase_env: Annotated[
        str | None,
        typer.Option(help="Encrypt the key with the passphrase in this environment variable."),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Replace an existing key (changes MRSIGNER).")
    ] = False,
) -> None:
    """Create an RSA-3072 (e=3) enclave signing key and print its MRSIGNER."""
    passphrase = _passphrase(passphrase_env)
    key = generate_enclave_key(out, passphrase=passphrase, overwrite=force)
    info_path = info or out.parent / "enclave.json"
    write_enclave_json(info_path, key_path=out, public_key=key.public_key())
    _say(f"wrote {out} (mode 0600) and {info_path}")
    _say(f"MRSIGNER {mrsigner_of(key.public_key()).hex()}")


@app.command()
def inspect(
    sigfile: Annotated[Path, typer.Argument(help="The .sig file written by gramine-sgx-sign.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    verify: Annotated[
        bool, typer.Option(help="Check the RSA signature and Q1/Q2 (fails on a bad one).")
    ] = True,
) -> None:
    """Show an enclave's identity: MRENCLAVE, MRSIGNER, ISV product id and SVN, attributes."""
    sig = read_sigstruct(sigfile)
    if verify:
        sig.verify_signature()
    data = sig.to_dict()
    data["signature_verified"] = verify
    if as_json:
        console.out(json.dumps(data, indent=2), highlight=False)
        return
    console.print(_sigstruct_table(sig, sigfile, verified=verify))


@app.command()
def manifest(
    workspace: Annotated[Path, typer.Argument(help="The workspace the enclave runs.")],
    role: Annotated[str, typer.Option(help="aggregator or collaborator.")] = "collaborator",
    name: Annotated[
        str | None, typer.Option(help="The collaborator's name (its certificate's CN).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write into.")] = Path(
        "enclave"
    ),
    explicit: Annotated[
        bool,
        typer.Option(help=f"Write {MANIFEST_NAME}.manifest with Gramine's paths filled in."),
    ] = False,
    arg: Annotated[
        list[str] | None,
        typer.Option(help="An argument after `python -m bastion` (repeat; default by role)."),
    ] = None,
    debug: Annotated[bool, typer.Option(help="Debug enclave (the host can read it).")] = False,
    enclave_size: Annotated[str, typer.Option(help="Power of two, e.g. 8G.")] = "8G",
    max_threads: Annotated[int, typer.Option(help="Enclave thread slots.")] = 64,
    isv_prod_id: Annotated[int, typer.Option(help="ISV product id (0..65535).")] = 0,
    isv_svn: Annotated[int, typer.Option(help="ISV security version (0..65535).")] = 0,
    data: Annotated[
        Path | None,
        typer.Option(help="Data directory (allowed, unprotected)."),
    ] = None,
    seal_checkpoints: Annotated[
        bool, typer.Option(help="Seal checkpoints to the signer (off: the host can read them).")
    ] = True,
    secrets: Annotated[
        Path,
        typer.Option(help="Host directory with the sealed PKI files (seen at the plan's pki_dir)."),
    ] = DEFAULT_SECRETS_DIR,
    key: Annotated[Path, typer.Option(help="Signing key named in the printed build steps.")] = Path(
        "enclave-key.pem"
    ),
) -> None:
    """Write the Gramine manifest template for a role and print the build steps."""
    roles: dict[str, Role] = {"aggregator": "aggregator", "collaborator": "collaborator"}
    if role not in roles:
        raise BastionError(f"--role must be aggregator or collaborator, got {role!r}")
    options = ManifestOptions(
        workspace=workspace,
        role=roles[role],
        name=name,
        args=tuple(arg) if arg else None,
        debug=debug,
        enclave_size=enclave_size,
        max_threads=max_threads,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        data_dir=data,
        secrets_dir=secrets,
        seal_checkpoints=seal_checkpoints,
    )
    out.mkdir(parents=True, exist_ok=True)
    if explicit:
        target = out / f"{MANIFEST_NAME}.manifest"
        target.write_text(render_manifest(options), encoding="utf-8")
    else:
        target = out / f"{MANIFEST_NAME}.manifest.template"
        target.write_text(render_manifest_template(options), encoding="utf-8")
    _say(f"wrote {target}")
    gramine = GramineInstall.detect()
    if explicit and not gramine.installed:
        _say(f"note: Gramine is not installed here; its paths assume {gramine.pkglibdir}")
    for path, reason in workspace_selection(options).excluded:
        _say(f"  left out {path} ({reason})")
    steps = build_steps(key=key.resolve())
    if explicit:
        steps = steps[1:]
    _say(f"build (in {out}):")
    for step in [*steps, run_command()]:
        _say(f"  {step.shell()}    # {step.purpose}")


@app.command()
def sign(
    directory: Annotated[Path, typer.Argument(help="Where `bastion tee manifest` wrote.")],
    key: Annotated[Path, typer.Option(help="The enclave signing key.")] = Path("enclave-key.pem"),
) -> None:
    """Run gramine-manifest and gramine-sgx-sign (needs Gramine), then show the identity."""
    template = directory / f"{MANIFEST_NAME}.manifest.template"
    if not template.is_file():
        raise BastionError(f"{template} not found: run `bastion tee manifest` first")
    if not key.is_file():
        raise BastionError(f"signing key {key} not found: run `bastion tee keygen` first")
    run_build_steps(build_steps(key=key.resolve()), directory)
    sigfile = directory / f"{MANIFEST_NAME}.sig"
    sig = read_sigstruct(sigfile)
    sig.verify_signature()
    console.print(_sigstruct_table(sig, sigfile, verified=True))


@app.command("verify")
def verify_command(
    quote: Annotated[
        Path,
        typer.Argument(
            help="Evidence: an SGX DCAP v3 or TDX v4/v5 quote, or an SEV-SNP report (with its "
            "certificate table); the kind is detected from the bytes."
        ),
    ],
    policy: Annotated[
        Path, typer.Option("--policy", help="plan.yaml (its attestation.policy) or a policy YAML.")
    ],
    cert: Annotated[
        Path | None, typer.Option(help="The quoting party's TLS certificate (PEM), with --nonce.")
    ] = None,
    nonce: Annotated[str | None, typer.Option(help="The 32-byte challenge nonce, hex.")] = None,
    plan_hash: Annotated[
        str | None,
        typer.Option(
            "--workspace-measurement",
            "--plan-hash",
            help="What TDX/SNP evidence binds besides key and nonce, with --cert: the workspace "
            "measurement (`bastion workspace verify` prints it), or the plan's hash for an "
            "unmeasured workspace.",
        ),
    ] = None,
    report_data: Annotated[
        str | None, typer.Option(help="The expected 64-byte report data, hex (instead of --cert).")
    ] = None,
    simulated_root: Annotated[
        Path | None,
        typer.Option(
            help="Simulated root CA, or a simulated-keys folder (only if the policy allows it)."
        ),
    ] = None,
    vcek: Annotated[
        Path | None, typer.Option(help="SNP: the chip's VCEK (DER or PEM) for a bare report.")
    ] = None,
    collateral: Annotated[
        Path | None, typer.Option(help="Intel collateral saved as JSON (offline TCB check).")
    ] = None,
    at: Annotated[
        str | None, typer.Option(help="Verify as of this UTC time (ISO 8601), e.g. saved evidence.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Check evidence by hand against a policy: exit 0 accepted, 1 rejected (the reason printed)."""
    import datetime as dt

    from bastion.tee.attestation import AttestationError
    from bastion.tee.attestation.manual import load_policy, verify_evidence_file

    pinned = load_policy(policy)
    when = None
    if at is not None:
        try:
            when = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError:
            raise BastionError(f"--at must be an ISO 8601 time, got {at!r}") from None
    try:
        verdict = verify_evidence_file(
            quote,
            pinned,
            certificate=cert,
            nonce_hex=nonce,
            plan_hash=plan_hash,
            report_data_hex=report_data,
            simulated=simulated_root,
            vcek=vcek,
            collateral=collateral,
            at=when,
        )
    except AttestationError as exc:
        if as_json:
            console.out(json.dumps({"accepted": False, "reason": exc.reason, "message": str(exc)}))
        else:
            _say(f"REJECTED ({exc.reason}): {exc}")
        raise typer.Exit(1) from None
    fields = _verdict_fields(verdict.verified, verdict.kind)
    fields["binding_checked"] = verdict.binding_checked
    if as_json:
        console.out(json.dumps(fields, indent=2), highlight=False)
        return
    hardware = {"sgx": "SGX", "tdx": "TDX", "snp": "SEV-SNP"}[verdict.kind]
    simulated = f" (SIMULATED evidence, no {hardware} hardware)" if fields["simulated"] else ""
    _say(f"ACCEPTED{'' if verdict.kind == 'sgx' else ' ' + hardware}{simulated}")
    for key, value in fields.items():
        if key not in ("accepted", "simulated", "binding_checked", "notes", "evidence"):
            _say(f"  {key}: {value}")
    if not verdict.binding_checked:
        _say(
            "  WARNING: report data not checked (give --cert and --nonce, or --report-data): "
            "this evidence could be replayed from another connection"
        )
    notes = fields["notes"]
    for note in notes if isinstance(notes, list) else []:
        _say(f"  note: {note}")


def _verdict_fields(verified: object, kind: str) -> dict[str, object]:
    from bastion.tee.attestation.snp_verify import VerifiedSnpReport
    from bastion.tee.attestation.tdx_verify import VerifiedTdQuote
    from bastion.tee.attestation.verify import VerifiedQuote

    if isinstance(verified, VerifiedQuote):
        return {
            "accepted": True,
            "evidence": kind,
            "simulated": verified.simulated,
            "mrenclave": verified.mr_enclave.hex(),
            "mrsigner": verified.mr_signer.hex(),
            "isv_prod_id": verified.isv_prod_id,
            "isv_svn": verified.isv_svn,
            "debug": verified.debug,
            "tcb_status": verified.tcb_status,
            "qe_tcb_status": verified.qe_tcb_status,
            "advisory_ids": list(verified.advisory_ids),
            "notes": list(verified.notes),
        }
    if isinstance(verified, VerifiedTdQuote):
        td = verified.td
        fields: dict[str, object] = {
            "accepted": True,
            "evidence": kind,
            "simulated": verified.simulated,
            "quote_version": verified.quote.version,
            "mrtd": td.mrtd.hex(),
        }
        fields.update({f"rtmr{i}": value.hex() for i, value in enumerate(td.rtmrs)})
        fields.update(
            {
                "mrseam": td.mrseam.hex(),
                "tee_tcb_svn": td.tee_tcb_svn.hex(),
                "td_attributes": f"{td.td_attributes:016x}",
                "xfam": f"{td.xfam:016x}",
                "debug": td.debug,
                "fmspc": verified.fmspc.hex(),
                "tcb_status": verified.tcb_status,
                "qe_tcb_status": verified.qe_tcb_status,
                "advisory_ids": list(verified.advisory_ids),
                "notes": list(verified.notes),
            }
        )
        return fields
    assert isinstance(verified, VerifiedSnpReport)
    report = verified.report
    return {
        "accepted": True,
        "evidence": kind,
        "simulated": verified.simulated,
        "report_version": report.version,
        "product": verified.product,
        "measurement": report.measurement.hex(),
        "host_data": report.host_data.hex(),
        "policy": f"{report.policy:#x}",
        "vmpl": report.vmpl,
        "debug": report.debug_allowed,
        "reported_tcb": report.reported_tcb.as_dict(),
        "tcb_status": verified.tcb_status,
        "notes": list(verified.notes),
    }


@app.command("simulated-keys")
def simulated_keys(
    directory: Annotated[
        Path,
        typer.Argument(
            help="Where to write them, inside the workspace (e.g. pki/attestation-sim)."
        ),
    ] = Path("pki/attestation-sim"),
    kind: Annotated[
        str, typer.Option(help="sgx, tdx or snp: which hardware the keys stand in for.")
    ] = "sgx",
    force: Annotated[bool, typer.Option(help="Replace keys already there.")] = False,
) -> None:
    """DEVELOPMENT ONLY: keys that sign simulated evidence, and the policy that accepts them."""
    from bastion.tee.attestation import build_simulated_hierarchy
    from bastion.tee.attestation.parties import simulated_identity
    from bastion.tee.attestation.simulated_cvm import (
        SIMULATED_MRTD,
        SIMULATED_SNP_MEASUREMENT,
        build_simulated_snp_hierarchy,
    )

    if kind not in ("sgx", "tdx", "snp"):
        raise BastionError(f"--kind must be sgx, tdx or snp, got {kind!r}")
    marker = "snp-simulated-ark.pem" if kind == "snp" else "simulated-root-ca.pem"
    if (directory / marker).exists() and not force:
        raise BastionError(
            f"{directory} already holds files (simulated {kind} keys): every party of a "
            "federation must use the same simulated keys, so copy that folder instead, or pass "
            "--force to replace them"
        )
    if kind == "sgx" and directory.exists() and any(directory.iterdir()) and not force:
        raise BastionError(
            f"{directory} already holds files: every party of a federation must use the same "
            "simulated keys, so copy that folder instead, or pass --force to replace it"
        )
    if kind == "snp":
        build_simulated_snp_hierarchy().save(directory)
    else:
        build_simulated_hierarchy().save(directory)
    _, mr_signer = simulated_identity("")
    _say(f"wrote simulated {kind} attestation keys to {directory} (private keys mode 0600)")
    _say("SIMULATED evidence proves nothing about hardware: never allow it in production.")
    _say(
        "Keep it under the plan's pki_dir (never measured or exported), copy it to every "
        "party, and set in plan.yaml:"
    )
    if kind == "sgx":
        section = (
            "  attestation:\n"
            "    provider: simulated\n"
            f"    simulated_dir: {directory.as_posix()}\n"
            "    policy:\n"
            "      required: true\n"
            f"      mrsigner: {mr_signer}\n"
            "      isv_prod_id: 0\n"
            "      min_isv_svn: 0\n"
            "      allow_simulated: true\n"
            "      collateral: none"
        )
    elif kind == "tdx":
        section = (
            "  attestation:\n"
            "    provider: simulated-tdx\n"
            f"    simulated_dir: {directory.as_posix()}\n"
            "    policy:\n"
            "      required: true\n"
            "      allow_simulated: true\n"
            "      collateral: none\n"
            "      tdx:\n"
            f"        mrtd: [{SIMULATED_MRTD.hex()}]"
        )
    else:
        section = (
            "  attestation:\n"
            "    provider: simulated-snp\n"
            f"    simulated_dir: {directory.as_posix()}\n"
            "    policy:\n"
            "      required: true\n"
            "      allow_simulated: true\n"
            "      collateral: none\n"
            "      snp:\n"
            f"        measurement: [{SIMULATED_SNP_MEASUREMENT.hex()}]"
        )
    _say(section)


@app.command("expected-measurement")
def expected_measurement(
    kind: Annotated[str, typer.Argument(help="rtmr (TDX RTMR replay) or snp (launch digest).")],
    file: Annotated[
        list[Path] | None,
        typer.Option("--file", help="rtmr: a file extended as one event (repeat, in order)."),
    ] = None,
    ovmf: Annotated[Path | None, typer.Option(help="snp: the OVMF firmware image.")] = None,
    kernel: Annotated[Path | None, typer.Option(help="snp: direct-boot kernel.")] = None,
    initrd: Annotated[Path | None, typer.Option(help="snp: direct-boot initrd.")] = None,
    append: Annotated[str | None, typer.Option(help="snp: kernel command line.")] = None,
    vcpus: Annotated[int, typer.Option(help="snp: number of vCPUs.")] = 1,
    vcpu_type: Annotated[str, typer.Option(help="snp: QEMU vCPU type, e.g. EPYC-v4.")] = "EPYC-v4",
) -> None:
    """Compute a value for the plan's tdx/snp policy from files Bastion can hash."""
    from bastion.tee.attestation.expected import rtmr_of_files, snp_launch_digest

    if kind == "rtmr":
        if not file:
            raise BastionError("rtmr needs at least one --file (the events, in extend order)")
        _say(rtmr_of_files(file).hex())
    elif kind == "snp":
        if ovmf is None:
            raise BastionError("snp needs --ovmf (and --kernel/--initrd/--append for direct boot)")
        digest = snp_launch_digest(
            ovmf=ovmf,
            vcpus=vcpus,
            vcpu_type=vcpu_type,
            kernel=kernel,
            initrd=initrd,
            append=append,
        )
        _say(digest.hex())
    else:
        raise BastionError(f"expected-measurement KIND is rtmr or snp, got {kind!r}")


def _sigstruct_table(sig: Sigstruct, source: Path, *, verified: bool) -> Table:
    table = Table(title=escape(f"SIGSTRUCT {source}"), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("MRENCLAVE", sig.mrenclave.hex())
    table.add_row("MRSIGNER", sig.mrsigner.hex())
    table.add_row("ISV product id", str(sig.isv_prod_id))
    table.add_row("ISV SVN", str(sig.isv_svn))
    debug = "[bold red]yes (the host can read this enclave)[/]" if sig.debug else "no"
    table.add_row("debug", debug)
    names = ", ".join(sig.attributes.flag_names()) or "none"
    table.add_row("attributes", f"{sig.attributes.flags:#x} ({names})")
    table.add_row("xfrm", f"{sig.attributes.xfrm:#x}")
    table.add_row("miscselect", f"{sig.misc_select:#x}")
    table.add_row("date", sig.date.isoformat() if sig.date else "unreadable")
    table.add_row("vendor", "Intel" if sig.vendor else "0 (not Intel)")
    table.add_row("signature", "valid" if verified else "not checked")
    return table


def _say(text: str) -> None:
    """Plain text: paths may contain brackets that rich would read as markup."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _passphrase(variable: str | None) -> bytes | None:
    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value:
        raise BastionError(f"environment variable {variable} is unset or empty: set it first")
    return value.encode("utf-8")


@app.command("image-manifests")
def image_manifests(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for <role>/ templates.")],
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="The workspace.")] = Path(
        "."
    ),
    debug: Annotated[bool, typer.Option(help="Debug enclaves (the host can read them).")] = False,
    enclave_size: Annotated[str, typer.Option(help="Power of two, e.g. 8G.")] = "8G",
    max_threads: Annotated[int, typer.Option(help="Enclave thread slots.")] = 64,
    isv_prod_id: Annotated[int, typer.Option(help="ISV product id (0..65535).")] = 0,
    isv_svn: Annotated[int, typer.Option(help="ISV security version (0..65535).")] = 0,
    data_dir: Annotated[
        str | None, typer.Option(help="Data directory in the container (allowed, unprotected).")
    ] = None,
    seal_checkpoints: Annotated[
        bool, typer.Option(help="Seal checkpoints to the signer (off: the host can read them).")
    ] = True,
) -> None:
    """Render the aggregator, collaborator and seal enclave templates of a graminized image
    (run by its Dockerfile, with the image's own interpreter)."""
    from bastion.workspace.gramine_image import EnclaveOptions, render_image_templates

    options = EnclaveOptions(
        debug=debug,
        enclave_size=enclave_size,
        max_threads=max_threads,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        data_dir=data_dir,
        seal_checkpoints=seal_checkpoints,
    )
    for path in render_image_templates(workspace.resolve(), out, options):
        _say(f"wrote {path}")


@app.command("seal")
def seal(
    source: Annotated[
        Path, typer.Option("--from", help="Plain PKI files: ca.crt, NAME.key, NAME.crt.")
    ],
    initial_model: Annotated[
        Path | None, typer.Option(help="Initial model to seal into the checkpoints directory.")
    ] = None,
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="The workspace.")] = Path(
        "."
    ),
) -> None:
    """Inside the seal enclave: copy a site's PKI (and the initial model) into the sealed
    directories. Refuses outside an SGX enclave."""
    from bastion.tee.seal import seal as seal_files

    sealed = seal_files(workspace, source, initial_model)
    for path in sealed.pki_files:
        _say(f"sealed {path}")
    _say(f"sealed {sealed.initial_model}" if sealed.initial_model else sealed.model_note)
    _say(f"now delete the plain copies in {source} on the host (e.g. shred -u)")
