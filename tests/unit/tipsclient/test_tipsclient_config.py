"""``tipsclient.connect`` before any network: the run dir, names, files, tokens.

Every mistake is refused at once with a message naming what is wrong (and
what there is instead); nothing here opens a connection.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tipsclient
from kernel.settings import Settings, SettingsError
from kernel.tls import material
from tipsclient import rundir

pytestmark = pytest.mark.unit

PORTS = {"events": 50054, "recommender": 50055, "gateway": 8080}


@pytest.fixture(autouse=True)
def no_run_dir_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIPS_RUN_DIR", raising=False)


def _run_dir(root: Path, identities: tuple[str, ...] = ("operator", "gateway")) -> Path:
    """A run dir as `tips up` leaves it; the certificate files only need to exist."""
    run = root / ".run"
    tls = run / "tls"
    tls.mkdir(parents=True)
    for name in ("ca", *identities):
        (tls / f"{name}.pem").write_text("-----BEGIN CERTIFICATE-----\n")
        if name != "ca":
            (tls / f"{name}.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    (run / "mesh.json").write_text(json.dumps({"ports": PORTS, "tls_dir": str(tls)}))
    return run


def test_the_run_dir_is_found_here_or_in_a_parent(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    found = rundir.find(start=deep)
    assert found.path == run
    assert found.services == ("events", "recommender")
    assert found.address_of("events") == "127.0.0.1:50054"
    assert found.identity("operator").cert_file == run / "tls" / "operator.pem"


def test_tips_run_dir_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run_dir(tmp_path / "elsewhere")
    monkeypatch.setenv("TIPS_RUN_DIR", str(run))
    assert rundir.find(start=tmp_path).path == run
    monkeypatch.setenv("TIPS_RUN_DIR", str(tmp_path / "gone"))
    with pytest.raises(tipsclient.ClientConfigError, match=r"no running mesh in .*gone"):
        rundir.find(start=tmp_path)


def test_no_run_dir_says_where_it_looked_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(tipsclient.ClientConfigError) as err:
        tipsclient.connect("events")
    message = str(err.value)
    assert f"no .run/mesh.json in {tmp_path.resolve()} or its parents" in message
    assert "`make up`" in message and "TIPS_RUN_DIR" in message and "address=" in message


def test_an_unreadable_mesh_json_is_named(tmp_path: Path) -> None:
    run = tmp_path / ".run"
    run.mkdir()
    (run / "mesh.json").write_text("{not json")
    with pytest.raises(tipsclient.ClientConfigError, match=r"cannot read .*mesh.json"):
        rundir.load(run)
    (run / "mesh.json").write_text("[]")
    with pytest.raises(tipsclient.ClientConfigError, match="has no ports"):
        rundir.load(run)


def test_an_unknown_service_lists_the_services_there_are(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    with pytest.raises(tipsclient.ClientConfigError) as err:
        tipsclient.connect("evnts", run_dir=run)
    assert str(err.value) == (
        f"unknown service 'evnts': the mesh in {run} runs events, recommender"
    )
    with pytest.raises(tipsclient.ClientConfigError, match=r"REST/JSON edge .*8080"):
        tipsclient.connect("gateway", run_dir=run)
    for bad in ("", "Events", "events.v1", "127.0.0.1:50054"):
        with pytest.raises(tipsclient.ClientConfigError, match="expected a mesh service name"):
            tipsclient.connect(bad, run_dir=run)


def test_an_unknown_identity_lists_the_certificates_issued(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    with pytest.raises(tipsclient.ClientConfigError) as err:
        tipsclient.connect("events", run_dir=run, identity="gatewy")
    message = str(err.value)
    assert "no development certificate for 'gatewy'" in message
    assert "(there are: gateway, operator)" in message
    assert f"`tips certs {run / 'tls'} gatewy`" in message


def test_missing_files_name_the_argument_and_the_path(tmp_path: Path) -> None:
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "me.pem", tmp_path / "me.key"
    ca.write_text("ca")
    key.write_text("key")
    with pytest.raises(tipsclient.CertificateFileError) as err:
        tipsclient.connect("events", address="127.0.0.1:1", ca=ca, cert=cert, key=key)
    assert str(err.value) == f"cert: cannot read {cert}: No such file or directory"
    assert (err.value.what, err.value.path) == ("cert", str(cert))
    with pytest.raises(tipsclient.ClientConfigError, match="cert and key go together"):
        tipsclient.connect("events", address="127.0.0.1:1", ca=ca, cert=cert)


def test_the_kernel_names_its_settings_for_the_same_files(tmp_path: Path) -> None:
    # kernel.tls reads through tipsclient.tls: its errors still name TIPS_TLS_*.
    (tmp_path / "ca.pem").write_text("ca")
    settings = Settings(
        insecure=False,
        tls_ca_file=str(tmp_path / "ca.pem"),
        tls_cert_file=str(tmp_path / "nope.pem"),
        tls_key_file=str(tmp_path / "nope.key"),
    )
    with pytest.raises(SettingsError) as err:
        material(settings)
    assert str(err.value) == (
        f"invalid configuration: TIPS_TLS_CERT_FILE: cannot read {tmp_path / 'nope.pem'}: "
        "No such file or directory"
    )


def test_explicit_address_and_files_need_no_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("ca.pem", "me.pem", "me.key"):
        (tmp_path / name).write_text(name)
    connection = tipsclient.connect(
        "events",
        address="10.0.0.7:443",
        ca=tmp_path / "ca.pem",
        cert=tmp_path / "me.pem",
        key=tmp_path / "me.key",
    )
    assert (connection.service, connection.address) == ("events", "10.0.0.7:443")


def test_an_explicit_address_still_takes_the_certificates_from_the_run_dir(
    tmp_path: Path,
) -> None:
    run = _run_dir(tmp_path)
    connection = tipsclient.connect("events", run_dir=run, address="127.0.0.1:6000")
    assert connection.address == "127.0.0.1:6000"
    assert tipsclient.connect("events", run_dir=run).address == "127.0.0.1:50054"


def test_a_token_is_sent_as_bearer_whatever_way_it_was_pasted(tmp_path: Path) -> None:
    assert tipsclient.bearer("abc.def") == (("authorization", "Bearer abc.def"),)
    assert tipsclient.bearer(" Bearer abc.def\n") == (("authorization", "Bearer abc.def"),)
    for bad, why in (("", "an empty string"), ("Bearer ", "an empty string"), ("a b", "spaces")):
        with pytest.raises(tipsclient.ClientConfigError, match=why):
            tipsclient.bearer(bad)
    run = _run_dir(tmp_path)
    with pytest.raises(tipsclient.ClientConfigError, match="token: expected an access token"):
        tipsclient.connect("events", run_dir=run, token="\n")
