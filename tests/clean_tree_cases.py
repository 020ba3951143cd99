"""The trees tests/test_clean_tree.py holds csr's clean-up to, and tests/authors_clean_tree.py runs the
authors' code on: each node is (parent, sentence, R_T, R_I, final); ids 1.. in order, the root is 0.
tree_nodes() makes such a spec into csr's nodes (tests/test_pairs.py's trees are specs too)."""

from csr.reward.tree import FINISH_DELIMITER, FINISH_EOS, Node, new_root


def tree_nodes(spec: list[tuple]) -> list[Node]:
    nodes = [new_root()]
    for parent, text, r_t, r_i, final in spec:
        nodes.append(Node(id=len(nodes), parent=parent, depth=nodes[parent].depth + 1, text=text, r_t=r_t, r_i=r_i,
                          finish=FINISH_EOS if final else FINISH_DELIMITER, final=final))
    return nodes


TREES = {
    # the tree: four repeats are not six, so the authors rank it (csr's repetition filter drops it)
    "repeat_four": [
        (0, " A star star star star is here.", -0.5, 35.0, True),
        (0, " A red star.", -1.0, 30.0, True),
        (0, " A moon.", -2.0, 10.0, True),
    ],
    # six repeats: dropped before ranking, so the other two root sentences rank as two, not three
    "repeat_six": [
        (0, " A star star star star star star is here.", -2.0, 25.0, True),
        (0, " A red star.", -1.0, 10.0, True),
        (0, " A blue moon.", -0.75, 20.0, False),
        (3, " It is small.", -1.0, 28.0, True),
        (3, " It is big.", -0.5, 22.0, True),
    ],
    # the Cyrillic sentence, the best by both scores
    "cyrillic": [
        (0, " Это красная звезда.", -0.5, 40.0, True),
        (0, " A red star.", -1.0, 30.0, True),
        (0, " A blue moon.", -1.5, 20.0, False),
        (3, " It is small.", -0.5, 22.0, True),
        (3, " It is big.", -1.0, 28.0, True),
    ],
    # kana, Hangul and &nbsp;&nbsp; are dropped; Chinese (4 characters once their clean_text takes the
    # full stop), Greek, an emoji and a single &nbsp; are not; a Cyrillic sentence one level down
    "scripts": [
        (0, " これは赤い星です。", -0.25, 45.0, True),
        (0, " 빨간 별입니다.", -0.5, 42.0, True),
        (0, " 一颗红星。", -1.0, 38.0, True),
        (0, " Ένα κόκκινο αστέρι.", -1.5, 20.0, True),
        (0, " A red star 😀.", -0.75, 30.0, False),
        (5, " Red&nbsp;&nbsp;star.", -0.25, 35.0, True),
        (5, " It is small&nbsp;.", -0.5, 25.0, True),
        (5, " Это луна.", -1.0, 30.0, True),
    ],
    # character runs, case, commas, newlines, and characters their clean_text removes before the
    # 4-character test
    "characters": [
        (0, " Wow!!!!!!!!!!!", -0.25, 40.0, True),  # 11 '!': dropped
        (0, " Wow!!!!!!!!!!", -1.25, 20.0, True),  # 10: kept
        (0, " A ''''''''''.", -0.5, 38.0, True),  # 10 single quotes: dropped
        (0, " Star star star star star star.", -0.75, 26.0, False),  # 'Star' is not 'star': kept
        (0, " A dog, dog, dog, dog, dog, dog.", -1.5, 24.0, True),  # commas between: kept
        (0, " A\n\n\n\n\n\nstar.", -0.6, 36.0, True),  # 6 newlines: dropped
        (0, " A\n\n\n\n\nmoon.", -1.75, 12.0, True),  # 5: kept
        (0, " -ok-.", -0.1, 45.0, True),  # 'ok.' once the hyphens go: dropped
        (0, " ★★ A.", -0.2, 44.0, True),  # ' A.': dropped
        (0, " A . . . . . . . . . . .", -0.3, 43.0, True),  # 11 dots, spaces between: dropped
        (4, " It is red.", -0.5, 30.0, True),
        (4, " It is blue.", -1.0, 34.0, True),
    ],
    # a dropped sentence takes its subtree; a sentence whose children are all dropped still ranks
    # among its siblings but ends no answer
    "subtrees": [
        (0, " A star star star star star star.", -0.25, 40.0, False),
        (0, " A red star.", -1.0, 30.0, True),
        (0, " A moon.", -0.5, 20.0, False),
        (1, " It is red.", -0.5, 30.0, True),
        (3, " It is big.", -1.0, 25.0, True),
        (3, " Это маленькая луна.", -0.5, 35.0, True),
        (3, " It is small.", -0.75, 15.0, True),
        (0, " A ring.", -1.5, 10.0, False),
        (8, " Кольцо.", -1.0, 20.0, True),
    ],
}
LAM = 0.9
