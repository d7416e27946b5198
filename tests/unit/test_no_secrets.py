"""No credential is committed: every file git would commit is grepped for credential shapes.

The development values of the kustomize Secret generator (.kubernetes/base/secrets/*.env, marked
as such) are the one sanctioned exception; tests/k8s/test_credentials.py checks that they appear
nowhere else. Credentials in *logs* are checked by tests/reliability/test_secrets_in_logs.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers.repo_files import files_git_would_commit

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATOR_INPUTS = ".kubernetes/base/secrets/"
BINARY_SUFFIXES = {".csv", ".parquet", ".png", ".pt", ".gz", ".zip", ".whl"}

# Shapes a real credential takes, whatever the variable around it is called.
CREDENTIAL_SHAPES = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key block": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "URL with a password": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s:@'\"$]{4,}@[^\s'\"]+"),
    # KEY = "literal": a secret-named setting given a literal value in code or config.
    "secret assigned a literal": re.compile(
        r"(?i)\b(aws_secret_access_key|secret_key|password|passwd|api_key|token)\b\s*[:=]\s*"
        r"['\"](?!\s*['\"])(?![<{$])[^'\"\s]{8,}['\"]"
    ),
}
# Strings that match a shape but are not credentials: test fixtures built to look like one.
ALLOWED = (
    re.compile(r"\bminio[a]dmin\b"),  # MinIO's default login; spelt so this line does not match itself
)
FORBIDDEN_NAMES = re.compile(r"(^|/)(\.env(\..+)?|id_rsa|id_ed25519|.*\.pem|.*\.key|credentials(\.json)?)$")


def scan(text: str) -> list[str]:
    found = []
    for name, shape in CREDENTIAL_SHAPES.items():
        for match in shape.finditer(text):
            if not any(allowed.search(match.group(0)) for allowed in ALLOWED):
                found.append(f"{name}: {match.group(0)[:60]}")
    return found


# Built by concatenation so that this file does not itself hold a credential shape.
_Q = "'"


@pytest.mark.parametrize(
    "sample",
    [
        "AWS_SECRET_ACCESS_KEY = " + '"wJalrXUtnFEMI/K7MDENG/' + 'bPxRfiCYEXAMPLEKEY"',
        "aws key " + "AKIA" + "IOSFODNN7EXAMPLE in a comment",
        "postgresql://mlflow:" + "hunter2hunter2@db:5432/mlflow",
        "-----BEGIN RSA " + "PRIVATE KEY-----",
        "password: " + _Q + "correct-horse-battery" + _Q,
    ],
)
def test_the_scanner_recognises_credential_shapes(sample: str) -> None:
    assert scan(sample), sample


@pytest.mark.parametrize(
    "sample",
    [
        'AWS_SECRET_ACCESS_KEY: SecretStr = Field(..., description="S3 secret key")',
        "secret_key=settings.AWS_SECRET_ACCESS_KEY.get_secret_value()",
        'password = os.environ["PGPASSWORD"]',
        "postgresql://mlflow@db:5432/mlflow",
        'token = ""',
    ],
)
def test_the_scanner_lets_references_to_credentials_pass(sample: str) -> None:
    assert not scan(sample), scan(sample)


def test_no_committed_file_holds_a_credential() -> None:
    files = files_git_would_commit()
    assert len(files) > 50, "git ls-files found too few files; is this the repository?"
    offenders = []
    for relative in files:
        if relative.startswith(GENERATOR_INPUTS) or Path(relative).suffix in BINARY_SUFFIXES:
            continue
        try:
            text = (REPO_ROOT / relative).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        offenders += [f"{relative}: {hit}" for hit in scan(text)]
    assert not offenders, offenders


def test_no_credential_file_is_committed() -> None:
    offenders = [f for f in files_git_would_commit() if FORBIDDEN_NAMES.search(f)]
    assert not offenders, offenders


def test_local_state_with_generated_keys_is_ignored_by_git() -> None:
    # `flts up` writes the generated S3 keys to .flts/stack.env; `flts run` writes logs to reports/.
    result = subprocess.run(
        ["git", "check-ignore", ".flts/stack.env", ".flts/stack.json", "reports/logs/x.log"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.split() == [".flts/stack.env", ".flts/stack.json", "reports/logs/x.log"]
