"""Repo id validation, checked against huggingface_hub's own validator (the oracle)."""

from __future__ import annotations

import pytest
from huggingface_hub.utils import HFValidationError
from huggingface_hub.utils import validate_repo_id as hf_validate
from hypothesis import given
from hypothesis import strategies as st

from aprender.errors import InvalidRepoIdError
from aprender.hub.repo_id import RepoId, validate_repo_id


def _hf_accepts(repo_id: str) -> bool:
    try:
        hf_validate(repo_id)
    except HFValidationError:
        return False
    return True


@pytest.mark.parametrize("repo_id", ["me/model", "Org-1/Qwen2.5-0.5B_ft", "a/b", "x_y/z.z", f"{'a' * 96}/{'b' * 96}"])
def test_valid_ids_pass_unchanged(repo_id: str) -> None:
    assert validate_repo_id(repo_id) == repo_id
    assert _hf_accepts(repo_id)


@pytest.mark.parametrize(
    ("repo_id", "fragment"),
    [
        ("gpt2", "exactly one '/'"),
        ("a/b/c", "exactly one '/'"),
        ("/b", "namespace must have 1 to 96"),
        ("a/", "name must have 1 to 96"),
        (f"a/{'b' * 97}", "name must have 1 to 96"),
        ("me/my model", "may only use"),
        ("me/café", "may only use"),
        ("me/-x", "must not start or end"),
        ("me/x.", "must not start or end"),
        (".me/x", "must not start or end"),
        ("me/a--b", "must not contain '--' or '..'"),
        ("me/a..b", "must not contain '--' or '..'"),
        ("me/model.git", "must not end with '.git'"),
    ],
)
def test_invalid_ids_say_which_rule(repo_id: str, fragment: str) -> None:
    with pytest.raises(InvalidRepoIdError, match=fragment.replace(".", r"\.").replace("(", r"\(")) as info:
        validate_repo_id(repo_id)
    assert repo_id in str(info.value) and "\n" not in str(info.value)


def test_non_string_is_rejected() -> None:
    with pytest.raises(InvalidRepoIdError, match="must be a string"):
        RepoId.parse(123)  # type: ignore[arg-type]


def test_parse_splits_and_round_trips() -> None:
    repo = RepoId.parse("alice/m-1")
    assert (repo.namespace, repo.name, str(repo)) == ("alice", "m-1", "alice/m-1")


@given(st.text(alphabet="ab9_-./Z", min_size=1, max_size=12))
def test_agrees_with_huggingface_hub(candidate: str) -> None:
    # Oracle: ours accepts exactly the ids huggingface_hub accepts that have a namespace.
    ours = True
    try:
        validate_repo_id(candidate)
    except InvalidRepoIdError:
        ours = False
    assert ours == (_hf_accepts(candidate) and candidate.count("/") == 1)
