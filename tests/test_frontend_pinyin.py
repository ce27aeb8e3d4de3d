"""Words and readings: polyphones, 一/不 sandhi, third-tone sandhi, neutral tone, erhua."""

from __future__ import annotations

import pytest

from tts_server.inference.frontend import Frontend


@pytest.fixture(scope="module")
def frontend() -> Frontend:
    return Frontend()


READINGS = [
    # polyphones resolved by phrase
    ("银行", "yin2 hang2"),
    ("行走", "xing2 zou3"),
    ("长大", "zhang3 da4"),
    ("很长", "hen3 chang2"),
    ("校长", "xiao4 zhang3"),
    ("重庆", "chong2 qing4"),
    ("重要", "zhong4 yao4"),
    ("还有", "hai2 you3"),
    ("还书", "huan2 shu1"),
    ("音乐", "yin1 yue4"),
    ("快乐", "kuai4 le4"),
    ("睡觉", "shui4 jiao4"),
    ("觉得", "jue2 de5"),
    ("朝代", "chao2 dai4"),
    ("得到", "de2 dao4"),
    ("跑得快", "pao3 de5 kuai4"),
    ("教你", "jiao1 #1 ni3"),
    # 一 sandhi
    ("一定", "yi2 ding4"),
    ("一样", "yi2 yang4"),
    ("一起", "yi4 qi3"),
    ("一天", "yi4 tian1"),
    ("一年", "yi4 nian2"),
    ("一会儿", "yi2 huir4"),
    ("第一", "di4 yi1"),
    ("统一", "tong3 yi1"),
    ("十一", "shi2 yi1"),
    ("看一看", "kan4 yi5 kan4"),
    ("2019年", "er4 ling2 yi1 jiu3 nian2"),
    ("1月1日", "yi1 yue4 #1 yi1 ri4"),
    ("1个", "yi2 ge4"),
    ("100元", "yi4 bai3 yuan2"),
    # 不 sandhi
    ("不是", "bu2 shi4"),
    ("不去", "bu2 qu4"),
    ("不好", "bu4 hao3"),
    ("是不是", "shi4 bu5 shi4"),
    ("对不起", "dui4 bu5 qi3"),
    # third tone
    ("你好", "ni2 hao3"),
    ("老虎", "lao2 hu3"),
    ("展览馆", "zhan2 lan2 guan3"),
    ("很好", "hen2 #1 hao3"),
    ("可以走", "ke2 yi2 #1 zou3"),
    ("美好理想", "mei2 hao3 #1 li2 xiang3"),  # two full words: no sandhi across them
    # neutral tone
    ("我们", "wo3 men5"),
    ("吃了吗", "chi1 #1 le5 #1 ma5"),
    ("妈妈", "ma1 ma5"),
    ("看看", "kan4 kan5"),
    ("慢慢", "man4 man4"),
    # erhua
    ("玩儿", "wanr2"),
    ("哪儿", "nar3"),
    ("花儿", "huar1"),
    ("一点儿", "yi4 dianr3"),
    ("女儿", "nv3 er2"),
    ("儿子", "er2 zi5"),
    # letters and digits mixed with Chinese
    ("GDP增长", "ji4 di4 pi4 #1 zeng1 zhang3"),
    ("3个人", "san1 ge4 #1 ren2"),
]


@pytest.mark.parametrize(("text", "pinyin"), READINGS)
def test_readings(frontend: Frontend, text: str, pinyin: str) -> None:
    assert frontend.pinyin(text) == [pinyin + " #4"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("北京今天天气怎么样", "bei3 jing1 #1 jin1 tian1 #1 tian1 qi4 #1 zen3 me5 yang4 #4"),  # compound split
        ("你好，世界。", "ni2 hao3 #3 shi4 jie4 #4"),
        ("苹果、香蕉", "ping2 guo3 #2 xiang1 jiao1 #4"),
        ("你好 世界", "ni2 hao3 #2 shi4 jie4 #4"),
        ("“你好”世界", "ni2 hao3 #1 shi4 jie4 #4"),
        ("好的😀谢谢", "hao3 #1 de5 #1 xie4 xie5 #4"),  # emoji not spoken
        # A number is cut into words at 万 and 亿; 万 stays with its digits, not with the next word.
        ("共300030000人", "gong4 #1 san1 yi4 #1 ling2 san1 wan4 ren2 #4"),
    ],
)
def test_breaks(frontend: Frontend, text: str, expected: str) -> None:
    assert frontend.pinyin(text) == [expected]
