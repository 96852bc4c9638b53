"""Hostile YAML documents for the tests of bounded reading."""

from __future__ import annotations


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The classic "billion laughs": each level an anchored list of ``width`` aliases of the
    one before, ``width ** levels`` strings once expanded, a few hundred bytes written."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def long_value(key: str, levels: int = 5, width: int = 9, chars: int = 200) -> str:
    """``key`` set to a list whose expansion stays under the node limit but whose text is
    ``chars * width ** levels`` characters (12 MB from ~450 bytes): a message that showed the
    whole value would be one line of that size."""
    items = [f'&s "{"x" * chars}"', "&a0 [" + ", ".join(["*s"] * width) + "]"]
    for i in range(1, levels):
        items.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return f"{key}: [" + ", ".join(items) + "]\n"
