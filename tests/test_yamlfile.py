"""Every YAML file a person writes fails the same way: a TandemError naming the file."""

from __future__ import annotations

import pytest
from yaml_bombs import alias_bomb

from tandem.errors import BundleError, ConfigError
from tandem.yamlfile import MAX_YAML_BYTES, read_yaml, read_yaml_mapping


def test_reads_a_document_and_an_empty_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("a: 1\nb: [x, y]\n", encoding="utf-8")
    assert read_yaml(good, "test file") == {"a": 1, "b": ["x", "y"]}
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert read_yaml(empty, "test file") is None
    assert read_yaml_mapping(empty, "test file") == {}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"a: [1, 2\n", "not valid YAML"),
        (b"a: \xff\xfe\n", "not UTF-8 text"),
    ],
)
def test_every_problem_names_the_file_and_what_it_is_for(tmp_path, content, message):
    path = tmp_path / "device.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"device profile .*device\.yaml: {message}"):
        read_yaml(path, "device profile")


def test_the_caller_chooses_the_error_class(tmp_path):
    path = tmp_path / "bundle.yaml"
    path.write_text("parts: {\n", encoding="utf-8")
    with pytest.raises(BundleError, match="bundle manifest .*not valid YAML"):
        read_yaml(path, "bundle manifest", error=BundleError)


def test_a_mapping_file_must_hold_a_mapping(tmp_path):
    path = tmp_path / "cloud.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cloud\.yaml: top level must be a mapping of keys"):
        read_yaml_mapping(path, "cloud config")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (alias_bomb(), r"refused: more than 100000 nodes \(aliases counted as what they expand"),
        ("cloud: " + "[" * 20_000 + "\n", "refused: nested deeper than 64 levels at line 1"),
        ("a: {" * 20_000 + "\n", "refused: nested deeper than 64 levels"),
        ("x" * (MAX_YAML_BYTES + 1), f"larger than {MAX_YAML_BYTES} bytes"),
        ("a: 1" + "9" * 5000 + "\n", "not valid YAML: Exceeds the limit"),
        ("a: [1, 2\n" + "b" * 10_000, "not valid YAML: while parsing a flow sequence"),
        ("a: b: c\n", r"not valid YAML: mapping values are not allowed here at line 1, column 5"),
    ],
)
def test_hostile_documents_are_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "edge.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"edge config .*edge\.yaml: {message}") as info:
        read_yaml(path, "edge config")
    assert "\n" not in str(info.value) and len(str(info.value)) < 500


def test_aliases_within_the_limits_still_work(tmp_path):
    """Anchors are a fine way to share a section; only their expansion is counted."""
    path = tmp_path / "small.yaml"
    path.write_text(alias_bomb(levels=3, width=3) + "b: &b {x: 1}\nc: *b\n", encoding="utf-8")
    data = read_yaml(path, "test file")
    assert len(data["a2"]) == 3 and data["a2"][0][0] == ["lol"] * 3 and data["c"] == {"x": 1}
    nodes = tmp_path / "nodes.yaml"  # 5 levels of 9: 59,049 strings, under the node limit
    nodes.write_text(alias_bomb(levels=5), encoding="utf-8")
    assert len(read_yaml(nodes, "test file")["a4"]) == 9
