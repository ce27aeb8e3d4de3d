"""Frontend throughput: sentences per second and per-sentence latency (p50/p99) after warm-up.

    python bench/frontend.py [--rounds 20] [--cold]

``--cold`` clears the per-word reading caches before every sentence (the worst case: every word new).
"""

from __future__ import annotations

import argparse
import statistics
import time

from tts_server.inference.frontend import Frontend
from tts_server.inference.frontend.pinyin import _raw_pinyin, word_reading

# Typical sentences of about 20 characters: news, dialogue, numbers, dates, letters.
SENTENCES = [
    "北京今天天气怎么样，会不会下雨呢？",
    "欢迎使用语音合成服务，祝您生活愉快。",
    "这家餐厅的菜很好吃，我们下次再来吧。",
    "会议将于2026年11月24日上午9:30开始。",
    "今年公司营收增长了12.5%，超出预期。",
    "请拨打客服电话13812345678咨询详情。",
    "他用iPhone拍了3张照片发给了妈妈。",
    "明天最高气温25℃，最低气温-3℃。",
    "这本书一共有三百二十页，我看了一半。",
    "我们一起去公园散步，然后回家吃饭吧。",
    "火车还有五分钟就要开了，快点儿上车。",
    "这个地方非常漂亮，很多人来这里旅游。",
    "你知道去银行怎么走吗？就在前面不远。",
    "小朋友们在操场上开心地玩儿着游戏。",
    "请在下一个路口左转，然后直行两公里。",
    "今天的股市上涨了1.2%，成交量放大。",
    "我觉得这个问题不太容易，需要再想想。",
    "长江是中国最长的河流，全长六千多公里。",
    "感谢您的耐心等待，您的订单已经发货。",
    "周末我们打算去看电影，你要一起来吗？",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cold", action="store_true", help="clear word caches before every sentence")
    args = parser.parse_args()

    start = time.perf_counter()
    frontend = Frontend()
    init_s = time.perf_counter() - start
    for text in SENTENCES:  # warm-up
        frontend.process(text, speaker="F7", emotion="neutral", allowed_emotions=("neutral",))

    latencies: list[float] = []
    total_start = time.perf_counter()
    for _ in range(args.rounds):
        for text in SENTENCES:
            if args.cold:
                word_reading.cache_clear()
                _raw_pinyin.cache_clear()
            t0 = time.perf_counter()
            frontend.process(text, speaker="F7", emotion="neutral", allowed_emotions=("neutral",))
            latencies.append(time.perf_counter() - t0)
    total_s = time.perf_counter() - total_start

    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    mean_chars = statistics.mean(len(s) for s in SENTENCES)
    print(f"frontend init + warm-up: {init_s * 1000:.0f} ms")
    print(f"sentences: {len(latencies)} ({mean_chars:.1f} chars on average), caches: {'cold' if args.cold else 'warm'}")
    print(f"throughput: {len(latencies) / total_s:.0f} sentences/s")
    print(f"latency per sentence: mean {statistics.mean(latencies) * 1000:.3f} ms, "
          f"p50 {latencies[len(latencies) // 2] * 1000:.3f} ms, p99 {p99 * 1000:.3f} ms, "
          f"max {latencies[-1] * 1000:.3f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
