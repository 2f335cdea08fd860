"""The book's retrieval evaluation set: reader questions in Chinese, each with the sections that answer it.

`questions.jsonl` (shipped with the package) holds one record per line:
``{"id": "q001", "question": "...", "page": "ch05_compression", "sections": ["ch05-pruning"], "split": "dev"}``.
`sections` are section keys of `corpus.split_sections` (the MyST label, or the heading slug when the heading has no
label), so the gold document ids are ``<page>#<section>``. The split is fixed in the file: within each page the
questions alternate between dev and test (pages alternate which half gets the first one), so both halves cover every
page and no question is in both. Tune on dev; report test once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

SPLITS = ("dev", "test")
QUESTIONS_FILE = "questions.jsonl"


@dataclass(frozen=True)
class Question:
    """One evaluation question and the ids of the book sections that answer it."""

    qid: str
    question: str
    page: str
    sections: tuple[str, ...]
    split: str

    @property
    def gold_doc_ids(self) -> frozenset[str]:
        """``<page>#<section>`` for each answering section (the `Document.doc_id` of book sections)."""
        return frozenset(f"{self.page}#{s}" for s in self.sections)


def _parse(line: str, number: int) -> Question:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{QUESTIONS_FILE} line {number}: not JSON ({err})") from err
    missing = {"id", "question", "page", "sections", "split"} - record.keys()
    if missing:
        raise ValueError(f"{QUESTIONS_FILE} line {number}: missing fields {sorted(missing)}")
    if record["split"] not in SPLITS:
        raise ValueError(f"{QUESTIONS_FILE} line {number}: split must be one of {SPLITS}, got {record['split']!r}")
    if not record["question"].strip() or not record["sections"]:
        raise ValueError(f"{QUESTIONS_FILE} line {number}: empty question or no answering section")
    return Question(record["id"], record["question"], record["page"], tuple(record["sections"]), record["split"])


def load_questions(split: str | None = None) -> list[Question]:
    """All questions in file order, or only those of `split` ('dev' or 'test')."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    text = resources.files(__package__).joinpath(QUESTIONS_FILE).read_text(encoding="utf-8")
    questions = [_parse(line, n) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    return [q for q in questions if split is None or q.split == split]


# Questions the book does not answer, for choosing (dev) and checking (test) when `ask` should say so.
OUT_OF_SCOPE = {
    "dev": (
        "红烧肉怎么做才不腻？", "去西藏旅游需要提前适应高原反应吗？", "明天北京会下雨吗？",
        "怎样给家里的猫剪指甲？", "买房贷款选等额本息还是等额本金？", "马拉松比赛前一周应该怎么吃？",
        "唐朝的都城在今天的哪个城市？", "阳台上种番茄要多久浇一次水？", "护照过期了怎么补办？",
        "感冒了可以喝咖啡吗？", "新手学吉他先练什么？", "世界杯每几年举办一次？",
        "冬天皮肤干燥该用什么护肤品？", "租房合同里押金条款要注意什么？", "怎么煮出好吃的米饭？",
        "婴儿几个月开始添加辅食？", "象棋里马为什么会被蹩腿？", "鱼缸里的水多久换一次？",
        "写毛笔字应该从哪种字体开始？", "太阳系里哪颗行星最大？",
    ),
    "test": (
        "饺子馅怎么调才鲜？", "第一次去日本旅游要办什么签证？", "周末适合去哪里爬山？",
        "狗狗掉毛严重是什么原因？", "信用卡逾期会影响征信吗？", "跑步膝盖疼应该怎么办？",
        "秦始皇统一六国是哪一年？", "多肉植物冬天要怎么养？", "驾照到期怎么换证？",
        "失眠的时候喝牛奶有用吗？", "钢琴考级需要准备多久？", "篮球比赛一节有几分钟？",
        "夏天怎么防晒才不会晒黑？", "离职时公司不给开证明怎么办？", "蒸鸡蛋羹怎么才能不起蜂窝？",
        "孩子多大可以开始学游泳？", "围棋的规则难学吗？", "金鱼为什么总是浮在水面上？",
        "油画和水彩画有什么区别？", "月亮为什么会有圆缺变化？",
    ),
}
