import pytest

from bigmodel_course.rag.reader import (
    NOT_IN_PASSAGE,
    WH,
    WH_BEFORE_NOUN,
    ClozeQuestion,
    ReaderRecord,
    align_answer,
    cloze_questions,
    faithfulness,
    majority_answers,
    questions_from,
    reader_conversations,
    summarize,
)

pytestmark = pytest.mark.unit


def _tagged(text: str) -> list[tuple[str, str]]:
    """'克鲁吉/nr 是/v ...' → [(word, tag), ...]."""
    return [tuple(token.split("/")) for token in text.split()]


def test_questions_from_replace_one_name_by_a_question_word():
    sentence = _tagged("克鲁吉/nr 是/v 应/v 外经贸部/nt 的/u 邀请/vn 来华/v 访问/v 的/u 。/w")
    assert questions_from(sentence) == [("谁是应外经贸部的邀请来华访问的？", "克鲁吉", "nr"),
                                        ("克鲁吉是应哪个机构的邀请来华访问的？", "外经贸部", "nt")]
    # a surname and a given name are tagged apart; before a noun the question word takes it
    sentence = _tagged("重视/v 群众/n 是/v 安/nr 子文/nr 同志/n 的/u 一贯/b 思想/n 。/w")
    assert questions_from(sentence) == [("重视群众是哪位同志的一贯思想？", "安子文", "nr")]
    sentence = _tagged("墨西哥/ns 金融/n 危机/n 的/u 原因/n 在于/v 积累/vn 不/d 稳/a 。/w")
    assert questions_from(sentence) == [("哪里的金融危机的原因在于积累不稳？", "墨西哥", "ns")]


def test_questions_from_skip_table_rows_and_short_or_repeated_names():
    assert questions_from(_tagged("昆明/ns １．４/m －/w ０．３/m －/w ０．４/m")) == []
    assert questions_from(_tagged("京/ns 是/v 一个/m 很/d 大/a 很/d 大/a 的/u 城市/n 啊/y 。/w")) == []
    assert questions_from(_tagged("北京/ns 人/n 爱/v 北京/ns 的/u 秋天/t 和/c 冬天/t 。/w")) == []


def test_cloze_questions_split_by_line_and_are_well_formed():
    splits = {s: cloze_questions(s) for s in ("train", "val", "test")}
    lines = [{q.line for q in qs} for qs in splits.values()]
    assert not (lines[0] & lines[1] or lines[0] & lines[2] or lines[1] & lines[2])
    assert len(splits["test"]) > 300 and len(splits["train"]) > 8 * len(splits["test"])
    assert len(lines[2]) == len(splits["test"])  # one question per test line: none shares a passage
    words = {*WH.values(), *WH_BEFORE_NOUN.values()}
    for q in splits["test"]:
        assert q.answer in q.sentence and q.answer not in q.question and q.question.endswith("？")
        assert any(w in q.question for w in words)
    with pytest.raises(ValueError, match="unknown split"):
        cloze_questions("dev")


def test_align_answer_undoes_the_cloze():
    passage = "新华社消息。克鲁吉是应中方的邀请来华访问的。他说，重视群众是安子文同志的一贯思想。"
    assert align_answer("谁是应中方的邀请来华访问的？", passage) == "克鲁吉"
    assert align_answer("重视群众是哪位同志的一贯思想？", passage) == "安子文"
    assert align_answer("谁在北京会见了他？", passage) is None


def test_faithfulness_counts_character_bigrams_found_in_the_passages():
    assert faithfulness("克鲁吉", ["克鲁吉是应邀来访的"]) == 1.0
    assert faithfulness("克鲁斯", ["克鲁吉是应邀来访的"]) == 0.5  # 克鲁 found, 鲁斯 not
    assert faithfulness("吉", ["克鲁吉"]) == 1.0 and faithfulness("京", ["克鲁吉"]) == 0.0
    assert faithfulness("江泽民", ["一段", "江泽民说"]) == 1.0
    with pytest.raises(ValueError, match="empty"):
        faithfulness("", ["x"])


def _q(qid: str, answer: str, kind: str = "ns") -> ClozeQuestion:
    return ClozeQuestion(qid, f"哪里下了雪？{qid}", answer, kind, f"{answer}下了雪。", int(qid[3:]), "test")


def test_majority_answers_per_kind():
    qs = [_q("pd-1", "北京"), _q("pd-2", "北京"), _q("pd-3", "上海"), _q("pd-4", "张三", "nr")]
    assert majority_answers(qs) == {"ns": "北京", "nr": "张三"}


class _Index:
    """Retrieval stand-in: each question's passage is given."""

    def __init__(self, passages):
        self.passages = passages
        self.chunks = [type("C", (), {"text": p, "doc_id": f"pd-9{i}"})() for i, p in enumerate(passages.values())]

    def retrieve(self, question, k=1):
        return [type("C", (), {"text": self.passages[question]})()]


def test_reader_conversations_answer_only_from_a_passage_that_holds_the_answer():
    qs = [_q("pd-1", "北京"), _q("pd-2", "上海")]
    index = _Index({qs[0].question: "北京下了雪。", qs[1].question: "广州没有下雪。"})
    conversations = reader_conversations(qs, index, distractor_share=1.0)
    assert len(conversations) == 6
    targets = {(c[0]["content"], c[-1]["content"]) for c in conversations}
    assert (f"问题：{qs[0].question}", "北京") in targets  # closed book: the name
    assert (f"问题：{qs[0].question}\n资料：「北京下了雪。」", "北京") in targets
    assert (f"问题：{qs[1].question}\n资料：「广州没有下雪。」", NOT_IN_PASSAGE) in targets
    distracted = [c for c in conversations if c[-1]["content"] == NOT_IN_PASSAGE]
    assert len(distracted) == 3


def test_summarize_counts_each_way_of_asking():
    q = _q("pd-1", "北京")
    records = [ReaderRecord(q, "北京下了雪。", "上海", "北京", "北京", NOT_IN_PASSAGE, "广州"),
               ReaderRecord(q, "北京下了雪。", "北京", "北海", "北京", "天津", "广州")]
    s = summarize(records)
    assert s["closed_em"] == 0.5 and s["open_em"] == 0.5 and s["oracle_em"] == 1.0
    assert s["open_faithfulness"] == 0.5 and s["open_fully_supported"] == 0.5
    assert s["distractor_refused"] == 0.5 and s["distractor_made_up"] == 0.5 and s["retrieval_hit"] == 1.0
    assert records[0].open_faithfulness == 1.0 and records[1].open_faithfulness == 0.0
    silent = ReaderRecord(q, "北京下了雪。", "", "", "", "", "广州")
    assert silent.open_faithfulness is None and summarize([silent])["open_em"] == 0.0
    with pytest.raises(ValueError, match="no records"):
        summarize([])
