"""Template: {column} placeholders checked against the columns before sending, rows rendered to messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from motio import ConfigurationError, MissingColumn
from motio.data import Prompt, Row, RowProblem, Template, open_rows

from .conftest import write_parquet


def test_a_row_becomes_the_messages_sent_with_its_id() -> None:
    template = Template("Classify the sentiment of: {text}", system="Answer pos or neg.")
    assert template.fields == ("text",)
    assert template.prompt(Row("r1", 1, {"text": "great film", "other": 1})) == Prompt(
        "r1",
        1,
        [
            {"role": "system", "content": "Answer pos or neg."},
            {"role": "user", "content": "Classify the sentiment of: great film"},
        ],
    )
    assert Template("{a}").render({"a": "x"}) == [{"role": "user", "content": "x"}]  # no system: none sent


def test_values_render_as_text_null_empty_objects_json_and_format_specs_apply() -> None:
    template = Template("{title}|{score:.2f}|{tags}|{meta}|{missing_value}|{{literal}}|{review title!r}")
    rendered = template.render(
        {
            "title": "T",
            "score": 0.5,
            "tags": ["a", "é"],
            "meta": {"k": 1},
            "missing_value": None,
            "review title": "x",
        }
    )
    assert rendered[0]["content"] == 'T|0.50|["a", "é"]|{"k": 1}||{literal}|\'x\''


def test_the_system_message_is_sent_as_written_braces_included() -> None:
    template = Template("{text}", system='Answer {"label": ...}')
    assert template.fields == ("text",)
    assert template.render({"text": "a"})[0] == {"role": "system", "content": 'Answer {"label": ...}'}


def test_check_names_the_missing_column_and_the_columns_there_before_any_row(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "d.parquet", [{"text": "a", "label": "pos"}])
    template = Template("{text} {lable}")
    with open_rows(path) as rows, pytest.raises(MissingColumn) as caught:
        template.check(rows.columns)
    assert isinstance(caught.value, ConfigurationError)
    assert caught.value.column == "lable" and caught.value.columns == ("text", "label")
    assert str(caught.value) == (
        "the column 'lable' named by the template is not in the data (did you mean 'label'?); "
        "its columns: 'text', 'label'"
    )
    template.check(["text", "lable"])  # all there: nothing raised


def test_a_row_lacking_a_column_becomes_a_problem_and_the_others_run() -> None:
    rows = [
        Row("line-1", 1, {"text": "a"}),
        Row("line-2", 2, {"other": "b"}),
        RowProblem(3, "bad"),
        Row(4, 4, {"text": "d"}),
    ]
    got = list(Template("{text}").prompts(rows))
    assert got[0] == Prompt("line-1", 1, [{"role": "user", "content": "a"}])
    assert got[1] == RowProblem(2, "has no column 'text', which the template uses")
    assert got[2] == RowProblem(3, "bad")
    assert got[3] == Prompt(4, 4, [{"role": "user", "content": "d"}])
    with pytest.raises(MissingColumn, match="'text'"):
        Template("{text}").render({"other": 1})


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("{text", "literal braces"),
        ("a } b", "literal braces"),
        ("{}", "names no column"),
        ("{0}", "names no column"),
        ("{text.upper}", "attribute or an index"),
        ("{rows[0]}", "attribute or an index"),
        ("{x:{width}}", "nests another placeholder"),
    ],
    ids=["unclosed", "stray-brace", "positional", "positional-number", "attribute", "index", "nested"],
)
def test_templates_that_cannot_work_are_refused_saying_why(text: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        Template(text)


def test_a_template_file_without_its_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "prompt.txt"
    path.write_text("Summarise:\n{text}\n", encoding="utf-8")
    template = Template.from_file(path, system="Be brief.")
    assert template.render({"text": "t"}) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Summarise:\nt"},
    ]
