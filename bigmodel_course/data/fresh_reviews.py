"""Short reviews written for this book (not taken from any corpus), an out-of-distribution check for sentiment models.

The review corpus is about hotels, books and computers, written around 2010. These reviews are about other things
(restaurants, phones, apps, courses, deliveries, films, clothes, services) and use everyday phrasings; each is
clearly positive (1) or clearly negative (0), and the two labels are balanced. A model that scores well on the
corpus's test split and poorly here has learned the corpus rather than the task.
"""

from __future__ import annotations

FRESH_REVIEWS: tuple[tuple[str, int], ...] = (
    # positive
    ("这家餐厅的菜很新鲜，服务员也很热情，下次还来。", 1),
    ("手机电池很耐用，充一次电能用两天，非常满意。", 1),
    ("快递第二天就到了，包装完好，客服回复也很及时。", 1),
    ("这门网课讲得清楚，例子实用，学完收获很大。", 1),
    ("电影节奏紧凑，演员演得好，看完还想再看一遍。", 1),
    ("衣服做工精细，尺码合适，穿着很舒服。", 1),
    ("这个软件界面简洁，用起来很顺手，推荐给大家。", 1),
    ("耳机音质清晰，戴久了耳朵也不疼，物超所值。", 1),
    ("银行柜员耐心解答问题，办理业务很快，体验很好。", 1),
    ("咖啡香浓，店里环境安静，很适合看书。", 1),
    ("孩子很喜欢这套积木，质量好，没有异味。", 1),
    ("师傅上门修空调很准时，修得又快又好，价格公道。", 1),
    ("健身房器材齐全，教练专业，办卡一点也不后悔。", 1),
    ("这款洗衣机噪音小，洗得干净，操作也简单。", 1),
    ("导游讲解生动，行程安排合理，这次旅行很愉快。", 1),
    ("面包松软好吃，价格不贵，每天早上都来买。", 1),
    ("新买的跑鞋很轻，脚感舒适，跑了十公里也不累。", 1),
    ("物业处理问题很及时，小区打扫得干干净净。", 1),
    ("游戏画面精美，玩法有趣，一玩就停不下来。", 1),
    ("理发师很用心，剪出来的发型我特别喜欢。", 1),
    ("外卖送得很快，饭菜还是热的，分量也足。", 1),
    ("这台相机拍照清楚，对焦很快，新手也容易上手。", 1),
    ("医生态度和蔼，讲得明白，开的药效果很好。", 1),
    ("网购的台灯质量不错，光线柔和，看书眼睛不累。", 1),
    # negative
    ("菜端上来是凉的，等了一个小时，再也不会来了。", 0),
    ("手机用了三天就死机，客服一直推脱，太失望了。", 0),
    ("快递拖了一个星期才到，盒子都压坏了。", 0),
    ("这门课全是念课件，内容空洞，白花了钱。", 0),
    ("电影剧情拖沓，看到一半就想走，浪费时间。", 0),
    ("衣服洗一次就掉色缩水，做工太差了。", 0),
    ("这个软件广告太多，还老是闪退，已经卸载了。", 0),
    ("耳机戴了一周就没声音了，质量很差。", 0),
    ("银行排队两个小时，窗口只开一个，服务太慢了。", 0),
    ("咖啡又苦又淡，杯子还不干净，不推荐。", 0),
    ("积木有很重的味道，零件还缺了好几块。", 0),
    ("修空调的师傅迟到两小时，修完第二天又坏了。", 0),
    ("健身房器材坏了没人修，办卡后就找不到教练。", 0),
    ("洗衣机噪音特别大，洗完衣服还是脏的。", 0),
    ("导游一路带我们购物，景点只待了十分钟，很糟糕。", 0),
    ("面包是隔夜的，又干又硬，价格还贵。", 0),
    ("跑鞋穿了一个月鞋底就开胶了，太差劲。", 0),
    ("物业收费高，报修一个月都没人来。", 0),
    ("游戏卡顿严重，充了钱还被封号，气死了。", 0),
    ("理发师完全不听要求，剪得乱七八糟。", 0),
    ("外卖送了一个半小时，汤洒了一半，饭也凉了。", 0),
    ("相机用了不到一个月镜头就进灰，售后不管。", 0),
    ("医生态度冷淡，问两句就不耐烦，很不舒服。", 0),
    ("台灯一直闪，用了两天开关就坏了。", 0),
)


def fresh_reviews() -> tuple[list[str], list[int]]:
    """(texts, labels) of the reviews written for this book."""
    return [t for t, _ in FRESH_REVIEWS], [y for _, y in FRESH_REVIEWS]
