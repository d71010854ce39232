"""The YAML reader: YAML 1.2 semantics, line map, and bounds."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from crm_notify.errors import RuleFileError
from crm_notify.rules.yaml_source import MAX_FILE_BYTES, parse_yaml, read_yaml_file

WriteRule = Callable[..., Path]


def test_yaml_12_keeps_on_and_no_as_strings() -> None:
    # Given keys and values that YAML 1.1 would turn into booleans
    text = "on: NO\nyes: off\nflag: true\n"

    # When it is parsed
    document = parse_yaml(text, Path("x.yaml"))

    # Then only true/false are booleans
    assert document.data == {"on": "NO", "yes": "off", "flag": True}


def test_yaml_11_directive_is_rejected() -> None:
    # Given a file asking for YAML 1.1 (where `on` would be a boolean)
    text = "# comment\n%YAML 1.1\n---\non: yes\n"

    # When it is parsed, then it fails at the directive's line
    with pytest.raises(RuleFileError, match=r"only YAML 1\.2") as caught:
        parse_yaml(text, Path("x.yaml"))
    assert caught.value.line == 2


def test_scalars_follow_the_core_schema() -> None:
    # Given numbers in several notations, a null and a date
    text = "n: [0o17, 0x1f, 1_000, -3, 1.5e3, .inf, ~, 2024-01-01, '12']\n"

    # When it is parsed
    document = parse_yaml(text, Path("x.yaml"))

    # Then numbers are numbers, the date stays text and quoted text stays text
    assert document.data["n"] == [15, 31, 1000, -3, 1500.0, float("inf"), None, "2024-01-01", "12"]


def test_lines_are_recorded_for_keys_and_items() -> None:
    # Given a nested document
    text = "a: 1\nb:\n  c:\n    - x\n    - y\n"

    # When it is parsed
    document = parse_yaml(text, Path("x.yaml"))

    # Then each key and list item has its own line, and unknown paths use the nearest ancestor
    assert document.lines[("a",)] == 1
    assert document.lines[("b", "c")] == 3
    assert document.lines[("b", "c", 1)] == 5
    assert document.line_for(("b", "c", 1, "missing")) == 5


def test_duplicate_key_reports_the_second_line() -> None:
    # Given a key written twice
    text = "name: a\ntemplate: t\nname: b\n"

    # When it is parsed, then the error names the second line and the first
    with pytest.raises(RuleFileError, match=r"duplicate key 'name' \(first on line 1\)") as caught:
        parse_yaml(text, Path("x.yaml"))
    assert caught.value.line == 3


@pytest.mark.parametrize(
    "text",
    [
        "a: !!python/object:os.system ls\n",
        "a: !!python/name:os.system\n",
        "a: !custom x\n",
        "a: !!set {x}\n",
        "a: !!binary aGk=\n",
    ],
)
def test_tags_are_rejected(text: str) -> None:
    # Given a value with a non-core tag; when it is parsed, then it fails at that line
    with pytest.raises(RuleFileError, match="unsupported YAML tag") as caught:
        parse_yaml("x: 1\n" + text, Path("x.yaml"))
    assert caught.value.line == 2


def test_merge_keys_are_rejected() -> None:
    # Given a YAML 1.1 merge key
    text = "base: &b {a: 1}\nrule:\n  <<: *b\n"

    # When it is parsed, then it fails at the merge key
    with pytest.raises(RuleFileError, match="merge keys") as caught:
        parse_yaml(text, Path("x.yaml"))
    assert caught.value.line == 3


def test_billion_laughs_fails_fast() -> None:
    # Given nine levels of nine aliases each (9**9 strings once expanded)
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    text = "\n".join(lines) + "\n"

    # When it is parsed
    started = time.perf_counter()
    with pytest.raises(RuleFileError, match="too many nodes") as caught:
        parse_yaml(text, Path("x.yaml"))

    # Then it fails quickly, with a line
    assert time.perf_counter() - started < 2
    assert caught.value.line is not None


def test_aliases_within_the_bound_are_expanded() -> None:
    # Given a value reused through an alias
    text = "a: &cond [x, y]\nb: *cond\n"

    # When it is parsed, then both keys hold the value
    assert parse_yaml(text, Path("x.yaml")).data == {"a": ["x", "y"], "b": ["x", "y"]}


@pytest.mark.parametrize("depth", [33, 3000, 300_000])
def test_deep_nesting_fails_fast(depth: int) -> None:
    # Given lists nested far deeper than any rule needs
    text = "[" * depth + "]" * depth

    # When it is parsed
    started = time.perf_counter()
    with pytest.raises(RuleFileError, match="nested deeper than 32 levels") as caught:
        parse_yaml(text, Path("x.yaml"))

    # Then it fails quickly (ruamel.yaml alone would recurse and slow down), at line 1
    assert time.perf_counter() - started < 2
    assert caught.value.line == 1


def test_nesting_at_the_limit_is_accepted() -> None:
    # Given lists nested exactly as deep as allowed; when parsed, then it loads
    assert parse_yaml("[" * 32 + "]" * 32, Path("x.yaml")).data is not None


def test_too_many_plain_nodes_fail_fast() -> None:
    # Given a flat list longer than the node bound
    text = "".join(f"- {index}\n" for index in range(20_000))

    # When it is parsed, then it fails at the first node over the bound
    started = time.perf_counter()
    with pytest.raises(RuleFileError, match="too many nodes") as caught:
        parse_yaml(text, Path("x.yaml"))
    assert time.perf_counter() - started < 2
    assert caught.value.line == 10_000


def test_reused_anchor_is_rejected() -> None:
    # Given an anchor defined twice (an alias would silently take the second)
    text = "a: &x 1\nb: &x 2\nc: *x\n"

    # When it is parsed, then it fails at the second definition
    with pytest.raises(RuleFileError, match="anchor '&x' is defined twice") as caught:
        parse_yaml(text, Path("x.yaml"))
    assert caught.value.line == 2


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "---\n"])
def test_empty_file_is_an_error(write_rule: WriteRule, text: str) -> None:
    # Given a file without content
    path = write_rule(text)

    # When it is read, then it fails naming the file
    with pytest.raises(RuleFileError, match="empty") as caught:
        read_yaml_file(path)
    assert caught.value.path == path


def test_file_over_one_mib_is_an_error(write_rule: WriteRule) -> None:
    # Given a file just over the size limit
    path = write_rule("# " + "x" * MAX_FILE_BYTES + "\nname: a\n")

    # When it is read, then it fails before parsing
    with pytest.raises(RuleFileError, match="larger than") as caught:
        read_yaml_file(path)
    assert caught.value.path == path


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    # Given a Latin-1 file with a non-ASCII character on line 2
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: a\ndescription: Grüße\n".encode("latin-1"))

    # When it is read, then the error names the file and the line
    with pytest.raises(RuleFileError, match=r"latin1\.yaml is not valid UTF-8") as caught:
        read_yaml_file(path)
    assert caught.value.path == path
    assert caught.value.line == 2


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    # Given a UTF-8 file with a byte order mark (as some Windows editors write)
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfname: a\n")

    # When it is read, then the mark is not part of the first key
    assert read_yaml_file(path).data == {"name": "a"}


def test_invalid_yaml_reports_the_line() -> None:
    # Given an unclosed flow list on line 2
    text = "name: a\nwhen: [x\ntemplate: t\n"

    # When it is parsed, then the error points near it
    with pytest.raises(RuleFileError, match="invalid YAML") as caught:
        parse_yaml(text, Path("x.yaml"))
    assert caught.value.line == 3


def test_several_documents_are_an_error() -> None:
    # Given two YAML documents in one file
    text = "name: a\n---\nname: b\n"

    # When it is parsed, then it fails at the second one
    with pytest.raises(RuleFileError, match="single document") as caught:
        parse_yaml(text, Path("x.yaml"))
    assert caught.value.line == 2


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    # Given a path with no file; when it is read, then the error names it
    with pytest.raises(RuleFileError, match="cannot read") as caught:
        read_yaml_file(tmp_path / "nope.yaml")
    assert caught.value.path == tmp_path / "nope.yaml"
