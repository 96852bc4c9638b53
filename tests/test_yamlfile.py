"""Every YAML file a person writes fails the same way: a TandemError naming the file."""

from __future__ import annotations

import pytest

from tandem.errors import BundleError, ConfigError
from tandem.yamlfile import read_yaml, read_yaml_mapping


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
