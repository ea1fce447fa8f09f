from shared.text_chunker import TextChunker


def feed(text: str, step: int = 3) -> list[str]:
    c = TextChunker()
    out = []
    for i in range(0, len(text), step):
        out += c.push(text[i : i + step])
    return out + c.flush()


def test_first_clause_is_cut_early_then_sentences():
    pieces = feed("Sure, the capital of France is Paris. It is lovely in spring, with many parks. Enjoy!")
    assert pieces == ["Sure,", "the capital of France is Paris.", "It is lovely in spring, with many parks.", "Enjoy!"]


def test_abbreviations_do_not_split():
    pieces = feed("Well, Mr. Smith went to Washington. He liked it there a lot.")
    assert "Mr." not in pieces and any("Mr. Smith went to Washington." in p for p in pieces)


def test_text_without_punctuation_is_flushed():
    assert feed("hello there friend") == ["hello there friend"]


def test_nothing_speakable_yields_nothing():
    assert feed(" ... ") == []


def test_chunks_preserve_all_words():
    text = "One, two three. Four five six seven eight! Nine ten eleven twelve? Thirteen"
    assert " ".join(feed(text, step=1)).split() == text.split()


def test_first_piece_does_not_wait_for_a_long_sentence():
    pieces = feed("I was working in a small town called Vintiers by the sea. It was nice.")
    assert pieces[0] == "I was working in a small town" and len(pieces) == 3


def test_wer_normalises_numbers_and_case():
    from shared.wer import wer

    assert wer(["In eighteen thirteen"], ["In 1813."]) == 0
    assert wer(["MISTER Smith has twenty one cats"], ["Mr. Smith has 21 cats!"]) == 0
    assert wer(["one two three four"], ["one two four"]) == 0.25
