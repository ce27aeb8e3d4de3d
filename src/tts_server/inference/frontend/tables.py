"""Static tables for the text frontend."""

from __future__ import annotations

# Traditional characters whose simplified form is unique in this direction (乾, 著, 藉, 徵 are left alone because
# they are also simplified characters with their own readings). Two parallel strings, character i -> i.
_TRAD = (
    "丟並亂亞佇來侖係俠個們倫偉傳傷價儀億償優兇兒兩冊凍創劃劇劍動務勝勞勢勵區協卻厲參員問單噴嚴國圍圖團報場塊壓壞壯壽夠夢奪奮婦媽孫學實寧審寫寬寶將專對導層屬島師帶幣幾廠廣張強彈後徑從復"
    "愛態慣憶應戀戰戲擁擇擊擔據擴攝敗敵數斷於時晝暫曆曉書會東條楊業極構樂樓標樣樹橋機檢權歐歡歲歷歸殺殼氣決沒滅滿漁漢潔濕濟災為無煙熱燈爭爺牆獨獲現瑪環產畢畫異當療發盡監盤確禦禮種稱穩窮"
    "競筆節範築簡糧紀約紅納紐純紙級細終組結絕絡給統絲經綠維網緊線練縣總績織繼續罰羅義聖聞聯聲職聽肅腦腳臉與興舉艦萬藝藥蘇蘭處號蟲術補裝製複見親覺觀訂計訊訓記訪設許診詞詢試話該詳誇誌認語"
    "誤說誰課調談請論諾謀講謝證識譯議護讀變讓讚豐貓貝負貧貨責貴買費貿資賓賞賠賣質賴購賽贊贏趕趙跡躍車軍軟較載輕輛輪輸轉辦辭農這進運過達遠適遲選遺還邊鄉鄰醜醫釋針鈴銀銷鋼錄錢錯鍵鎖鎮鏡鐘"
    "鐵長門閃閉開間閱闆關陰陳陽隊際隨險隱雖雙雜雞離難雲電靈靜韓響頁項順須預頓領頭頻題額顏願類顧顯風颱飄飛飯飲飽館餵馬駕驗驚體髮鬥鬧魚魯鮮鳥鳳鳴麥麵麼黃點黨齊齒齡龍龜"
)
_SIMP = (
    "丢并乱亚伫来仑系侠个们伦伟传伤价仪亿偿优凶儿两册冻创划剧剑动务胜劳势励区协却厉参员问单喷严国围图团报场块压坏壮寿够梦夺奋妇妈孙学实宁审写宽宝将专对导层属岛师带币几厂广张强弹后径从复"
    "爱态惯忆应恋战戏拥择击担据扩摄败敌数断于时昼暂历晓书会东条杨业极构乐楼标样树桥机检权欧欢岁历归杀壳气决没灭满渔汉洁湿济灾为无烟热灯争爷墙独获现玛环产毕画异当疗发尽监盘确御礼种称稳穷"
    "竞笔节范筑简粮纪约红纳纽纯纸级细终组结绝络给统丝经绿维网紧线练县总绩织继续罚罗义圣闻联声职听肃脑脚脸与兴举舰万艺药苏兰处号虫术补装制复见亲觉观订计讯训记访设许诊词询试话该详夸志认语"
    "误说谁课调谈请论诺谋讲谢证识译议护读变让赞丰猫贝负贫货责贵买费贸资宾赏赔卖质赖购赛赞赢赶赵迹跃车军软较载轻辆轮输转办辞农这进运过达远适迟选遗还边乡邻丑医释针铃银销钢录钱错键锁镇镜钟"
    "铁长门闪闭开间阅板关阴陈阳队际随险隐虽双杂鸡离难云电灵静韩响页项顺须预顿领头频题额颜愿类顾显风台飘飞饭饮饱馆喂马驾验惊体发斗闹鱼鲁鲜鸟凤鸣麦面么黄点党齐齿龄龙龟"
)
TRAD_TO_SIMP: dict[str, str] = dict(zip(_TRAD, _SIMP, strict=True))

# Customary Mandarin names of Latin letters, as pinyin syllables (spelled acronyms: CPU, GDP, AI).
LETTER_READINGS: dict[str, tuple[str, ...]] = {
    "A": ("ei1",), "B": ("bi4",), "C": ("xi1",), "D": ("di4",), "E": ("yi4",), "F": ("ai2", "fu5"),
    "G": ("ji4",), "H": ("ei1", "qi1"), "I": ("ai4",), "J": ("jie4",), "K": ("kai4",), "L": ("ai2", "le5"),
    "M": ("ai2", "mu5"), "N": ("en1",), "O": ("ou1",), "P": ("pi4",), "Q": ("kou4",), "R": ("a4", "er5"),
    "S": ("ai2", "si5"), "T": ("ti4",), "U": ("you1",), "V": ("wei1",), "W": ("da2", "bu5", "liu1"),
    "X": ("ai2", "ke4", "si5"), "Y": ("wai4",), "Z": ("zei4",),
}  # fmt: skip

# Characters whose reduplication (妈妈, 看看) is a noun or verb read with a neutral second syllable; adjectives and
# adverbs (慢慢, 好好, 常常) keep their tone and are not listed.
NEUTRAL_REDUPLICATED = frozenset(
    "妈爸哥姐弟妹奶爷叔婆公舅姑伯姥宝娃星猩太婶嫂"  # kinship and other nouns
    "看听想试说走谈问谢坐玩聊尝找动歇瞧摸数洗转写读学练逛跳笑闻揉敲帮"  # verbs: do a little
)

# Words CC-CEDICT reads both ways (东西 east and west / a thing, 地方 local / a place) whose neutral-tone sense is
# the everyday one; every other word in the neutral-tone lexicon comes from the data unambiguously.
NEUTRAL_SENSE_PREFERRED = frozenset(
    "东西 地方 告诉 故事 本事 生意 出息 大夫 妻子 孙子 结实 琢磨 名堂 门道 跟前 言语 打扮 买卖".split()  # noqa: SIM905
)
