"""Writes grlo-eval's IFEval fixture responses: for every instruction type, real items of
ifeval.jsonl answered once to follow that instruction and once to break it, plus
adversarial answers (markdown, fences, preambles, blank and non-English text); then, appended
so that the first ones keep their order, model-like answers to all the instructions of
further items (each followed, and one broken), hand-written answers given to items spread
over the data set, and texts at the edges of Python's string and regex semantics. Their
judgements come from ifeval_reference.py, never from the code under test. langdetect is
unseeded in lm-eval, so foreign-language answers lead with plenty of their language: the
reference must come out the same on every run (check by running it a few times).

    python tests/python/ifeval_fixture_responses.py ifeval.jsonl > responses.jsonl
"""

import json
import sys

PER_TYPE = 3

FILLER = "The quick brown fox jumps over the lazy dog"

LANGUAGE_TEXT = {
    "de": "Das Wetter ist heute sehr schön und wir gehen zusammen in den großen Park spazieren.",
    "pt": "O tempo está muito bonito hoje e nós vamos passear juntos no parque da cidade.",
    "it": "Il tempo è molto bello oggi e andiamo a fare una passeggiata insieme nel parco.",
    "ru": "Сегодня очень хорошая погода, и мы вместе идём гулять в большой городской парк.",
    "bg": "Днес времето е много хубаво и ние отиваме заедно на разходка в големия парк.",
    "fi": "Tänään on erittäin kaunis sää ja menemme yhdessä kävelylle suureen puistoon.",
    "vi": "Hôm nay thời tiết rất đẹp và chúng tôi cùng nhau đi dạo trong công viên lớn.",
    "ko": "오늘은 날씨가 정말 좋아서 우리는 함께 큰 공원에 산책하러 갑니다.",
    "hi": "आज मौसम बहुत अच्छा है और हम सब मिलकर बड़े पार्क में घूमने जा रहे हैं।",
    "ar": "الطقس جميل جدا اليوم ونحن نذهب معا للتنزه في الحديقة الكبيرة.",
    "th": "วันนี้อากาศดีมากและพวกเราจะไปเดินเล่นในสวนสาธารณะขนาดใหญ่ด้วยกัน",
    "fa": "امروز هوا بسیار خوب است و ما با هم برای قدم زدن به پارک بزرگ می رویم.",
    "sw": "Leo hali ya hewa ni nzuri sana na tunakwenda pamoja kutembea katika bustani kubwa.",
}


def sentences(n):
    return " ".join(f"Sentence number {i + 1} is here." for i in range(n))


def words(n):
    return " ".join(["word"] * n)


def relation_count(threshold, relation, follow):
    """A count that satisfies (or breaks) `relation` against `threshold`."""
    if relation == "less than":
        return max(threshold - 1, 0) if follow else threshold
    return threshold if follow else max(threshold - 1, 0)


def build(iid, kw, prompt, follow):
    """A response that follows (or breaks) instruction `iid` with kwargs `kw`."""
    if iid == "keywords:existence":
        keys = kw["keywords"] if follow else kw["keywords"][:-1]
        return f"{FILLER}. " + " and ".join(keys) + "."
    if iid == "keywords:frequency":
        n = relation_count(kw["frequency"], kw["relation"], follow)
        return "Here: " + " ".join([kw["keyword"]] * n) + "."
    if iid == "keywords:forbidden_words":
        bad = "" if follow else f" Also {kw['forbidden_words'][0].upper()}!"
        return "Plain text about nothing." + bad
    if iid == "keywords:letter_frequency":
        n = relation_count(kw["let_frequency"], kw["let_relation"], follow)
        other = "x" if kw["letter"].lower() != "x" else "z"
        return " ".join([kw["letter"].upper()] * n + [other * 3])
    if iid == "language:response_language":
        text = LANGUAGE_TEXT.get(kw["language"])
        return text if follow and text else f"{FILLER}, and this answer is written in English."
    if iid == "length_constraints:number_sentences":
        n = relation_count(kw["num_sentences"], kw["relation"], follow)
        return "Dr. Smith met Mr. Jones at 5 p.m. today. " + sentences(max(n - 1, 0))
    if iid == "length_constraints:number_paragraphs":
        n = kw["num_paragraphs"] + (0 if follow else 1)
        return "\n***\n".join(f"Paragraph {i + 1} text." for i in range(n))
    if iid == "length_constraints:number_words":
        n = relation_count(kw["num_words"], kw["relation"], follow)
        return words(n)
    if iid == "length_constraints:nth_paragraph_first_word":
        paragraphs = [f"Paragraph {i + 1} text." for i in range(kw["num_paragraphs"])]
        first = kw["first_word"] if follow else "wrong"
        paragraphs[kw["nth_paragraph"] - 1] = f"{first.capitalize()}, this paragraph starts right."
        return "\n\n".join(paragraphs)
    if iid == "detectable_content:number_placeholders":
        n = kw["num_placeholders"] - (0 if follow else 1)
        return "Dear " + " ".join(f"[field {i}]" for i in range(n)) + ", hello."
    if iid == "detectable_content:postscript":
        tail = f"\n\n{kw['postscript_marker']} Thanks for reading." if follow else "\n\nThanks for reading."
        return "A letter body." + tail
    if iid == "detectable_format:number_bullet_lists":
        n = kw["num_bullets"] + (0 if follow else 1)
        return "List:\n" + "\n".join(("* " if i % 2 else "- ") + f"point {i}" for i in range(n))
    if iid == "detectable_format:constrained_response":
        return "My answer is maybe." if follow else "Maybe, I am not sure."
    if iid == "detectable_format:number_highlighted_sections":
        n = kw["num_highlights"] - (0 if follow else 1)
        return " ".join(("**bold %d**" if i % 2 else "*part %d*") % i for i in range(n)) + " and ** ** text."
    if iid == "detectable_format:multiple_sections":
        n = kw["num_sections"] - (0 if follow else 1)
        spl = kw["section_spliter"]
        return "\n".join(f"{spl} {i + 1}\nContent {i + 1}." for i in range(n))
    if iid == "detectable_format:json_format":
        return '```json\n{"answer": "yes", "n": [1, 2]}\n```' if follow else 'Here is JSON: {"answer": "yes"}'
    if iid == "detectable_format:title":
        return "<<A Good Title>>\nBody text." if follow else "<< >>\nBody without a title."
    if iid == "combination:two_responses":
        return "First answer.\n******\nSecond answer." if follow else "Same answer.\n******\nSame answer."
    if iid == "combination:repeat_prompt":
        return (kw["prompt_to_repeat"] + "\nHere is my answer.") if follow else ("Sure. " + kw["prompt_to_repeat"])
    if iid == "startend:end_checker":
        return (f"Some text. {kw['end_phrase']}") if follow else (f"{kw['end_phrase']} Some more text.")
    if iid == "change_case:capital_word_frequency":
        n = relation_count(kw["capital_frequency"], kw["capital_relation"], follow)
        return "We " + " ".join(["SHOUT"] * n) + " and then whisper quietly."
    if iid == "change_case:english_capital":
        return "THIS IS A RESPONSE WRITTEN ENTIRELY IN CAPITAL LETTERS ABOUT THE WEATHER." if follow else "This Is Mixed Case Text About The Weather Today."
    if iid == "change_case:english_lowercase":
        return "this is a response written entirely in lowercase letters about the weather." if follow else "this is mostly lowercase but Not entirely about the weather."
    if iid == "punctuation:no_comma":
        return "No commas here at all." if follow else "Well, there is a comma."
    if iid == "startend:quotation":
        return '"A quoted answer."' if follow else 'A quoted answer."'
    raise ValueError(iid)


ADVERSARIAL = [
    "",
    "   \n  ",
    "Sure! Here is my answer:\n**MY ANSWER IS YES.**\nHope this helps!",
    "```\n{\"a\": NaN}\n```",
    "```JSON\n[1, 2,]\n```",
    "  \"Quoted with trailing space\"   \n",
    "*Title*\n<<Real Title>>\n* one\n* two\n- three\n***\nSECTION 1 text\nP.P.S the end",
    "Das ist eine deutsche Antwort, mit Kommas, und ohne englische Wörter.",
    "这是一个中文回答。没有英文。",
    "I DON'T KNOW. U.S.A. IS BIG. WE'LL SEE!",
    "first line\nreal body without commas\nlast line, with comma",
    "Mr. Smith went to Washington. He arrived at 3 p.m. on Jan. 5. It rained... a lot!",
]


# ---------------------------------------------------------------------------------------
# Realistic answers, appended after the per-type and adversarial ones above (whose order
# and text stay as they were). Every instruction of an item is answered together, as a
# model would: prose with commas, abbreviations and mixed case, markdown lists, bold and
# italic, sections, fenced JSON, postscripts, titles, quotes and other languages. One
# response per item tries to follow everything, and a second breaks one instruction.

PROSE = [
    "Remote work has changed how teams talk to each other, and not always for the better.",
    "Most people underestimate how long a small project really takes.",
    "Dr. Patel, who ran the study, found that sleep mattered more than diet.",
    "The U.S. economy grew by 2.5 percent last year, e.g. in services and retail.",
    "Honestly, I think the answer depends on what you value most!",
    "Why do we keep repeating the same mistakes?",
    "A good plan is simple, clear, and easy to follow.",
    "The museum opens at 9 a.m. and closes at 5 p.m. on weekdays.",
    "She said, \"Never give up on a good idea.\" Then she left.",
    "There are three main reasons: cost, time, and quality.",
    "It's not about being perfect; it's about being consistent.",
    "In 1969, NASA landed two astronauts on the Moon.",
    "The results were... surprising, to say the least.",
    "Mr. and Mrs. Smith moved to St. Louis in Jan. 2020.",
    "Writing every day is hard, but it gets easier with practice.",
    "You can't improve what you don't measure.",
    "The recipe calls for 2 cups of flour, 1 egg and a pinch of salt.",
    "Travel teaches patience (and a little humility).",
    "Our team shipped version 3.1 ahead of schedule.",
    "I'd recommend starting small and growing from there.",
]

FOREIGN = dict(
    LANGUAGE_TEXT,
    kn="ಇಂದು ಹವಾಮಾನ ತುಂಬಾ ಚೆನ್ನಾಗಿದೆ ಮತ್ತು ನಾವು ಎಲ್ಲರೂ ಸೇರಿ ದೊಡ್ಡ ಉದ್ಯಾನವನಕ್ಕೆ ನಡೆಯಲು ಹೋಗುತ್ತಿದ್ದೇವೆ. ಮಕ್ಕಳು ಆಟವಾಡುತ್ತಾರೆ.",
    mr="आज हवामान खूप छान आहे आणि आम्ही सर्वजण मिळून मोठ्या बागेत फिरायला जात आहोत. मुले तिथे खेळतील आणि आम्ही गप्पा मारू.",
    pa="ਅੱਜ ਮੌਸਮ ਬਹੁਤ ਵਧੀਆ ਹੈ ਅਤੇ ਅਸੀਂ ਸਾਰੇ ਮਿਲ ਕੇ ਵੱਡੇ ਬਾਗ ਵਿੱਚ ਘੁੰਮਣ ਜਾ ਰਹੇ ਹਾਂ। ਬੱਚੇ ਉੱਥੇ ਖੇਡਣਗੇ।",
    gu="આજે હવામાન ખૂબ સરસ છે અને અમે બધા સાથે મોટા બગીચામાં ફરવા જઈએ છીએ. બાળકો ત્યાં રમશે.",
    te="ఈ రోజు వాతావరణం చాలా బాగుంది మరియు మేము అందరం కలిసి పెద్ద పార్కుకు నడకకు వెళ్తున్నాము. పిల్లలు అక్కడ ఆడుకుంటారు.",
    ta="இன்று வானிலை மிகவும் நன்றாக உள்ளது, நாங்கள் அனைவரும் சேர்ந்து பெரிய பூங்காவிற்கு நடக்கச் செல்கிறோம். குழந்தைகள் அங்கே விளையாடுவார்கள்.",
    ur="آج موسم بہت اچھا ہے اور ہم سب مل کر بڑے پارک میں سیر کرنے جا رہے ہیں۔ بچے وہاں کھیلیں گے اور ہم باتیں کریں گے۔",
    ne="आज मौसम धेरै राम्रो छ र हामी सबै मिलेर ठूलो बगैंचामा घुम्न जाँदैछौं। केटाकेटीहरू त्यहाँ खेल्नेछन्।",
    bn="আজ আবহাওয়া খুব সুন্দর এবং আমরা সবাই মিলে বড় পার্কে বেড়াতে যাচ্ছি। শিশুরা সেখানে খেলবে।",
)

VOCAB = (
    "able about after again always answer around because before better bring build "
    "change clear could every family friend future garden great happy health house "
    "idea important island journey kitchen language later listen little market money "
    "morning music nature never night often people place planet quiet really reason "
    "river school simple small start story strong summer teacher today travel under "
    "until village water weather window winter wonder world young"
).split()


def prose(rng, n, lang=None):
    """`n` sentences: English from PROSE, or the text of `lang` repeated."""
    if lang is not None:
        return " ".join([FOREIGN[lang]] * max(1, (n + 1) // 2))
    return " ".join(rng.choice(PROSE) for _ in range(n))


def count_words_py(text):
    import re

    return len(re.findall(r"\w+", text))


def letter_words(letter, n, rng):
    """Words of VOCAB with exactly `n` occurrences of `letter` in all, padded by others."""
    has = [w for w in VOCAB if w.count(letter) == 1]
    lacks = [w for w in VOCAB if letter not in w]
    out = [rng.choice(has) if has else letter for _ in range(n)]
    out += [rng.choice(lacks) for _ in range(6)]
    rng.shuffle(out)
    return " ".join(out)


def segment(iid, kw, follow, rng, lang):
    """A realistic piece of an answer for one content instruction (None: a global one)."""
    if iid == "keywords:existence":
        keys = kw["keywords"] if follow else kw["keywords"][:-1]
        if lang is not None:
            # The keywords amid the target language, so that langdetect stays sure of it.
            return " ".join(f"{k}: {FOREIGN[lang]}" for k in keys) or FOREIGN[lang]
        parts = [f"When I think about {k}, {rng.choice(PROSE).lower()}" for k in keys]
        return " ".join(parts) or rng.choice(PROSE)
    if iid == "keywords:frequency":
        n = relation_count(kw["frequency"], kw["relation"], follow)
        k = kw["keyword"]
        forms = [k, k.capitalize(), k.upper(), f"({k})", f"{k}'s"]
        return " ".join(f"The {forms[i % len(forms)]} matters here." for i in range(n)) or "Nothing more to add."
    if iid == "keywords:forbidden_words":
        w = kw["forbidden_words"][-1]
        text = f"{rng.choice(PROSE)} Some say {w}s or un{w} are fine words to use."
        return text + ("" if follow else f" **{w.capitalize()}**, though, is the word I promised to avoid.")
    if iid == "keywords:letter_frequency":
        letter = kw["letter"].lower()
        n = relation_count(kw["let_frequency"], kw["let_relation"], follow)
        return letter_words(letter, n, rng).capitalize() + "."
    if iid == "length_constraints:number_sentences":
        n = relation_count(kw["num_sentences"], kw["relation"], follow)
        return prose(rng, max(n, 1), lang)
    if iid == "length_constraints:number_words":
        n = relation_count(kw["num_words"], kw["relation"], follow)
        text = ""
        while count_words_py(text) + 12 < n:
            text += rng.choice(PROSE) + " "
        pad = n - count_words_py(text)
        return (text + " ".join(rng.choice(VOCAB) for _ in range(max(pad, 0)))).strip() or "Ok"
    if iid == "detectable_content:number_placeholders":
        n = kw["num_placeholders"] - (0 if follow else 1)
        fields = ["name", "address", "date", "company", "phone number", "email", "city", "job title"]
        lines = [f"{fields[i % len(fields)].capitalize()}: [{fields[i % len(fields)]}]" for i in range(n)]
        return "\n".join(lines) if lines else "Dear friend, hello."
    if iid == "detectable_format:number_bullet_lists":
        n = kw["num_bullets"] + (0 if follow else rng.choice([1, -1]))
        marks = ["* ", "- ", "  * ", "* **Key point:** "]
        return "\n".join(marks[i % len(marks)] + rng.choice(PROSE) for i in range(max(n, 0)))
    if iid == "detectable_format:number_highlighted_sections":
        n = kw["num_highlights"] - (0 if follow else 1)
        spans = [("*%s*" if i % 2 else "**%s**") % f"highlighted part {i + 1}" for i in range(n)]
        return " ".join(f"{s}: {rng.choice(PROSE)}" for s in spans) or "No highlights here."
    if iid == "change_case:capital_word_frequency":
        n = relation_count(kw["capital_frequency"], kw["capital_relation"], follow)
        caps = ["NASA", "IMPORTANT", "NEVER", "USA", "FAQ", "WOW", "ASAP"]
        return "Remember: " + " ".join(caps[i % len(caps)] for i in range(n)) + " matters to everyone here."
    return None


def compose(item, broken, rng):
    """An answer to all of `item`'s instructions; the one at index `broken` is broken."""
    ids, kws = item["instruction_id_list"], item["kwargs"]
    kws = [{k: v for k, v in kw.items() if v} for kw in kws]
    follow = [i != broken for i in range(len(ids))]
    lang = None
    for i, (iid, kw) in enumerate(zip(ids, kws)):
        if iid == "language:response_language" and kw["language"] in FOREIGN:
            lang = kw["language"] if follow[i] else None
            if not follow[i] and kw["language"] in ("hi", "mr", "ne"):
                lang = "hi" if kw["language"] != "hi" else "mr"
    # A foreign answer leads with enough of its language that langdetect is sure of it.
    pieces = [prose(rng, rng.randint(1, 3) + (5 if lang else 0), lang)]
    for i, (iid, kw) in enumerate(zip(ids, kws)):
        seg = segment(iid, kw, follow[i], rng, lang)
        if seg is not None:
            pieces.append(seg)
    # Paragraph structure.
    for i, (iid, kw) in enumerate(zip(ids, kws)):
        if iid == "length_constraints:number_paragraphs":
            n = kw["num_paragraphs"] + (0 if follow[i] else 1)
            while len(pieces) < n:
                pieces.append(prose(rng, 2, lang))
            pieces = pieces[: n - 1] + ["\n".join(pieces[n - 1 :])]
            sep = rng.choice(["\n\n***\n\n", "\n***\n", " *** "])
            text = sep.join(pieces)
            break
        if iid == "length_constraints:nth_paragraph_first_word":
            n = kw["num_paragraphs"] + (0 if follow[i] else rng.choice([0, 1]))
            while len(pieces) < n:
                pieces.append(prose(rng, 2, lang))
            pieces = pieces[: n - 1] + ["\n".join(pieces[n - 1 :])]
            nth = kw["nth_paragraph"] - 1
            word = kw["first_word"] if follow[i] or n != kw["num_paragraphs"] else "However"
            start = rng.choice(["{w} {p}", "{w}, {p}", "\"{w}\" {p}", "{W} {p}"])
            pieces[nth] = start.format(w=word.capitalize(), W=word.upper(), p=pieces[nth][0].lower() + pieces[nth][1:])
            text = "\n\n".join(pieces)
            break
        if iid == "detectable_format:multiple_sections":
            n = kw["num_sections"] - (0 if follow[i] else 1)
            spl = kw["section_spliter"]
            while len(pieces) < n:
                pieces.append(prose(rng, 2, lang))
            head = rng.choice(["{s} {i}", "**{s} {i}**", "### {s} {i}:", "{s} {i}."])
            text = "\n\n".join(
                (head.format(s=spl, i=j + 1) + "\n" if j < n else "") + p for j, p in enumerate(pieces)
            )
            break
    else:
        text = "\n\n".join(pieces)
    for i, (iid, kw) in enumerate(zip(ids, kws)):
        if iid == "detectable_format:title":
            title = rng.choice(["<<A Day to Remember>>", "<<The Plan>>", "<<why it matters>>", "**<<Notes on Change>>**"])
            text = (title if follow[i] else rng.choice(["# A Day to Remember", "<< >>", "<A Day>"])) + "\n\n" + text
        if iid == "detectable_content:postscript":
            marker = kw["postscript_marker"]
            if follow[i]:
                marker = rng.choice([marker, marker.lower(), marker.replace(".", ". ").strip()])
            else:
                marker = rng.choice(["PS", "Note:", "PPS"])
            text += f"\n\n{marker} {rng.choice(PROSE)}"
        if iid == "detectable_format:constrained_response":
            opt = rng.choice(["My answer is yes.", "My answer is no.", "My answer is maybe."])
            text = (opt if follow[i] else opt.replace("My answer", "my answer")) + "\n\n" + text
    # Whole-response instructions, in the order a model would apply them.
    order = [
        "change_case:capital_word_frequency",
        "change_case:english_capital",
        "change_case:english_lowercase",
        "punctuation:no_comma",
        "combination:two_responses",
        "detectable_format:json_format",
        "combination:repeat_prompt",
        "startend:end_checker",
        "startend:quotation",
    ]
    for iid in order:
        for i, (jid, kw) in enumerate(zip(ids, kws)):
            if jid != iid:
                continue
            f = follow[i]
            if iid == "change_case:english_capital":
                text = text.upper() if f else text.upper().replace("THE ", "the ", 1) if "THE " in text.upper() else text
            elif iid == "change_case:english_lowercase":
                text = text.lower() if f else text.lower() + " I think so."
            elif iid == "punctuation:no_comma":
                text = text.replace(",", "") if f else text.replace(",", "") + rng.choice([" Well, that is it.", "\nOne, two."])
            elif iid == "combination:two_responses":
                other = prose(rng, 2, lang)
                if f:
                    text = text + "\n******\n" + other
                else:
                    text = rng.choice([text + "\n******\n" + text, text + "\n*****\n" + other, text + "\n******\n" + other + "\n******\n" + other])
            elif iid == "detectable_format:json_format":
                body = json.dumps({"answer": text, "ok": True}, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2]))
                text = rng.choice(["```json\n{}\n```", "{}", "```\n{}\n```"]).format(body) if f else "Here is the JSON:\n" + body + "\nDone"
            elif iid == "combination:repeat_prompt":
                rp = kw["prompt_to_repeat"]
                text = (rp + "\n\n" + text) if f else ("Sure, let me repeat: " + rp + "\n\n" + text)
            elif iid == "startend:end_checker":
                end = kw["end_phrase"]
                text = text + "\n\n" + (rng.choice([end, f"**{end}**", f"{end}\""]) if f else f"{end} Thanks!")
            elif iid == "startend:quotation":
                text = (f'"{text}"' if f else rng.choice([f"“{text}”", f'"{text}', f"'{text}'"]))
    return text


# Hand-written model-like answers, each given to several items so that all their
# instructions judge it.
REALISTIC = [
    "Sure! Here's a short poem about the ocean:\n\n<<Waves at Dawn>>\n\nThe sea wakes slow, the gulls reply,\nA silver line beneath the sky.\n\nP.S. I hope you enjoy it!",
    "**Title: The Benefits of Exercise**\n\n* Improves mood\n* Builds strength\n* Helps you sleep\n\nIn short, exercise is worth it.",
    "```json\n{\n  \"name\": \"Alice\",\n  \"age\": 30,\n  \"hobbies\": [\"reading\", \"chess\"]\n}\n```",
    "Here is the information in JSON format:\n```json\n{\"city\": \"Paris\", \"population\": 2148000}\n```\nLet me know if you need more!",
    "SECTION 1\nThe history of the bicycle begins in 1817.\n\nSECTION 2\nToday, bicycles are used everywhere, from cities to mountains.",
    "Section 1: Introduction\nThis essay looks at climate change.\nSection 2: Causes\nMostly fossil fuels.\nSection 3: Solutions\nRenewables, efficiency and policy.",
    "\"I think the best way to learn a language is to speak it every day, even when you make mistakes.\"",
    "my answer is yes. i really think so, and i would do it again.",
    "My answer is no.",
    "DEAR HIRING MANAGER,\n\nI AM WRITING TO APPLY FOR THE POSITION OF SOFTWARE ENGINEER. I HAVE FIVE YEARS OF EXPERIENCE.\n\nSINCERELY,\nJOHN",
    "here is a list of reasons why cats make great pets:\n\n- they are independent\n- they are clean\n- they are quiet\n\np.s. dogs are great too.",
    "Dear [name],\n\nThank you for your letter dated [date]. We will send the package to [address] by [delivery date].\n\nBest regards,\n[your name]",
    "Paragraph one talks about the problem.\n\n***\n\nParagraph two offers a solution.\n\n***\n\nParagraph three concludes.",
    "Response 1: The capital of France is Paris.\n******\nResponse 2: Paris is the capital city of France.",
    "Of course! *Highlighted section 1*: planning. *Highlighted section 2*: execution. **Highlighted section 3**: review.",
    "The lazy afternoon drifted by without a single comma in sight and nobody minded at all.",
    "Der Sommer in Berlin ist warm und die Menschen sitzen gerne draußen in den Cafés. Abends gehen viele an der Spree spazieren.",
    "Nous sommes allés au marché ce matin pour acheter des légumes frais, du pain et du fromage.",
    "Mi familia y yo vamos a la playa todos los veranos porque nos encanta el mar y el sol.",
    "東京は日本の首都です。多くの人がここに住んでいて、毎日とても忙しいです。",
    "Сегодня я прочитал интересную книгу о космосе, и мне очень понравилось.",
    "I. Love. Short. Sentences. They. Are. Fun! Are they? Yes!!! Maybe... not.",
    "The U.N. met on Jan. 3rd. Prof. Lee, Ph.D., spoke first. The vote was 12 vs. 3, i.e. a clear win.",
    "Title: <<My Summer Vacation>>\nThis summer I went to the mountains with my family. We hiked every day.\nIs there anything else I can help with?",
    "WHAT A GREAT QUESTION! THE ANSWER IS 42.",
    "# Heading\n\n## Subheading\n\n1. First step\n2. Second step\n3. Third step\n\n---\n\n> A quote from someone wise.",
    "Here's my answer in two parts.\n\n******\n\n",
    "<<>> Untitled\n\n**Bold** and *italic* and ***both***.",
    "ok",
    "Let me know if you have additional questions.",
]


def realistic_section(items, used):
    import random

    rng = random.Random(20250101)
    out = []
    by_type = {}
    for item in items:
        for iid in item["instruction_id_list"]:
            by_type.setdefault(iid, []).append(item)
    # Per instruction type, three more items (those with most instructions first), each
    # answered once following everything and once breaking that type.
    chosen_keys = set()
    for iid in sorted(by_type):
        pool = sorted(by_type[iid], key=lambda it: (-len(it["instruction_id_list"]), it["key"]))
        pool = [it for it in pool if it["key"] not in used and it["key"] not in chosen_keys] or pool
        for item in pool[:3]:
            chosen_keys.add(item["key"])
            ids = item["instruction_id_list"]
            for broken in (None, ids.index(iid)):
                text = compose(item, broken, rng)
                style = rng.randrange(4)
                if style == 1:
                    text = rng.choice(["Sure! Here is my response:", "Okay.", "Here you go:"]) + "\n" + text
                elif style == 2:
                    text = text + "\n" + rng.choice(["Hope this helps!", "Let me know if you need anything else.", "**Good luck!**"])
                out.append({"key": item["key"], "response": text})
    # Hand-written answers, each to three items spread over the data set.
    rest = [it for it in items if it["key"] not in used and it["key"] not in chosen_keys]
    for i, text in enumerate(REALISTIC):
        for j in range(3):
            item = rest[(i * 3 + j) * 7 % len(rest)]
            out.append({"key": item["key"], "response": text})
    return out



# Texts at the edges of Python's string and regex semantics, each given to two items
# that have the instruction it probes.
EDGES = [
    ("length_constraints:number_words", "नमस्ते दुनिया, यह एक परीक्षण है। किताबें और कहानियाँ पढ़ना अच्छा लगता है।"),
    ("length_constraints:number_words", "well-known state-of-the-art e-mail don't can't 3.14 1,000,000 _under_score_"),
    ("keywords:forbidden_words", "Café naïve résumé: the word appears as ünword, wordé and _word_ only."),
    ("detectable_format:number_bullet_lists", "Items:\r\n* one\r\n* two\r\n- three\r\n**not a bullet**\r\n  -nested dash\r\n"),
    ("detectable_format:number_bullet_lists", "Intro line\n\n\n*   spaced star\n\t- tabbed dash\n*\n- \n---\n***"),
    ("detectable_content:postscript", "Body of the letter.\r\nP.S. carriage returns end this line\r\nP.P.S\u00a0and this one"),
    ("detectable_content:postscript", "Thanks!\n\n  p. s. lower case with spaces\n\nP.P.S: another note"),
    ("length_constraints:number_paragraphs", "First paragraph.\u00a0***\u00a0Second paragraph.\u2028***\u2028Third paragraph."),
    ("length_constraints:number_paragraphs", "***\nOnly one real paragraph here.\n***\n"),
    ("detectable_format:multiple_sections", "SECTION １\nFull-width digit.\nSECTION 2\nASCII digit.\nSECTION٣\nArabic-Indic digit."),
    ("detectable_format:multiple_sections", "Section 1\nsection 2\nSECTION 3\nSection\u00a04\nSection 5"),
    ("detectable_format:title", "<<Ünïcödé Tïtlé>>\n<<\u3000>>\n<<\t>>\nBody."),
    ("detectable_format:json_format", "```JSON\n{\"a\": 1e5, \"b\": \"\\u00e9\", \"c\": -0.5E-3, \"d\": [true, false, null]}\n```"),
    ("detectable_format:json_format", "```json\n{\"a\": 1}\n```\n\nThat is the JSON object you asked for."),
    ("detectable_format:json_format", "\u00a0 {\"tab\": \"a\\tb\", \"big\": 123456789012345678901234567890}\u3000"),
    ("detectable_format:number_highlighted_sections", "*one* **two** ***three*** *\u00a0* ** ** *four\nfive* **six**seven*"),
    ("startend:quotation", "\u00a0\"Quoted, with Unicode spaces around.\"\u2003"),
    ("startend:end_checker", "Some answer.\n\nIs there anything else I can help with?\"\n"),
    ("change_case:english_lowercase", "this answer is lowercase except for ǅ, a titlecase letter, and ª."),
    ("change_case:english_capital", "THIS ANSWER IS UPPERCASE WITH ẞ, Ⓐ AND ǅ IN IT."),
    ("change_case:english_capital", "THIS ANSWER IS UPPERCASE WITH 123 NUMBERS AND ΣΊΣΥΦΟΣ."),
    ("keywords:letter_frequency", "ΑΣ ΣΑΣ İstanbul ǅemal — letters with odd lower cases: ßSSẞ."),
    ("length_constraints:nth_paragraph_first_word", "\n\n'\"Quoted first word\" starts here.\n\n\n\nSecond, after blank pieces.\n\n  Third!?\n\n"),
    ("combination:two_responses", "******\nFirst answer here.\n******\n\n  \n******Second answer here.******"),
    ("combination:repeat_prompt", "\u00a0\u00a0"),
    ("detectable_content:number_placeholders", "[a] [] [b [c]] [\n] [d]\n[e"),
    ("punctuation:no_comma", "No ASCII comma here，only full-width， and Arabic، ones."),
    ("keywords:frequency", "The keyword inside words: keywords, KEYWORD, key-word, keyword."),
]


def edge_section(items):
    out = []
    for iid, text in EDGES:
        chosen = sorted((it for it in items if iid in it["instruction_id_list"]), key=lambda it: -it["key"])
        for item in chosen[: 2]:
            out.append({"key": item["key"], "response": text})
    return out


def main():
    items = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
    # lm-eval draws a random letter for item 1122 ("#" is no ASCII letter): not a fixture.
    items = [item for item in items if item["key"] != 1122]
    out = []
    for iid in sorted({i for item in items for i in item["instruction_id_list"]}):
        chosen = [item for item in items if iid in item["instruction_id_list"]]
        if iid == "language:response_language":
            chosen = [c for c in chosen if c["kwargs"][c["instruction_id_list"].index(iid)]["language"] in LANGUAGE_TEXT]
        # Prefer items with few instructions, so the other checks vary less.
        chosen = sorted(chosen, key=lambda item: (len(item["instruction_id_list"]), item["key"]))[:PER_TYPE]
        for item in chosen:
            kw = item["kwargs"][item["instruction_id_list"].index(iid)]
            for follow in (True, False):
                out.append({"key": item["key"], "response": build(iid, kw, item["prompt"], follow)})
    # Adversarial answers, each to items that exercise many checks.
    many = sorted(items, key=lambda item: -len(item["instruction_id_list"]))[:4]
    for i, text in enumerate(ADVERSARIAL):
        for item in (many[i % len(many)], items[i]):
            out.append({"key": item["key"], "response": text})
    out += realistic_section(items, {sample["key"] for sample in out})
    out += edge_section(items)
    for sample in out:
        print(json.dumps(sample, ensure_ascii=False))


main()
