"""The 40 CelebA attributes in the official order: the one source of truth.

Readers, models, CSV columns and reports all index attributes through this module, so a model's
output column ``i`` always means ``ATTRIBUTES[i]``. Pure Python; runs anywhere.
"""
from __future__ import annotations

# Order of the columns of list_attr_celeba.txt (and of every facray model head).
ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald",
    "Bangs", "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair",
    "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
NUM_ATTRIBUTES = len(ATTRIBUTES)
ATTRIBUTE_INDEX: dict[str, int] = {name: i for i, name in enumerate(ATTRIBUTES)}

# CelebA's 5 facial landmarks, in the order of list_landmarks_align_celeba.txt (x, y each). A
# horizontal mirror swaps left with right, so point i of a mirrored face is point
# MIRRORED_LANDMARKS[i] of the original.
LANDMARK_ORDER: tuple[str, ...] = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
MIRRORED_LANDMARKS: tuple[int, ...] = (1, 0, 2, 4, 3)

# Taherkhani et al.: attributes tied to identity, fused with the identity branch.
IDENTITY_ATTRIBUTES: tuple[str, ...] = (
    "Narrow_Eyes", "Big_Nose", "Pointy_Nose", "Chubby", "Double_Chin",
    "High_Cheekbones", "Male", "Bald", "Big_Lips", "Oval_Face",
)

# Berrahal & Azizi (ABM-CNN) report Table 1 for these 27 only.
ABM_REPORTED_ATTRIBUTES: tuple[str, ...] = (
    "No_Beard", "Wavy_Hair", "5_o_Clock_Shadow", "Attractive", "Brown_Hair", "Bags_Under_Eyes",
    "Sideburns", "Big_Lips", "Big_Nose", "Arched_Eyebrows", "Blond_Hair", "Blurry",
    "Bushy_Eyebrows", "Chubby", "Eyeglasses", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes",
    "Oval_Face", "Pale_Skin", "Double_Chin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Smiling", "Bald", "Straight_Hair",
)

# Attributes that facray's generated CelebA draws into the picture (the rest are random noise).
RENDERED_ATTRIBUTES: tuple[str, ...] = (
    "Bald", "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Eyeglasses",
    "Smiling", "Mouth_Slightly_Open", "Mustache", "Goatee", "No_Beard", "Wearing_Hat",
    "Pale_Skin", "Heavy_Makeup", "Wearing_Lipstick",
)

MODALITIES: tuple[str, ...] = ("real", "sketch")


def resolve_attributes(names: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Turn a user's selection into attribute names in official order.

    ``None``, ``"all"`` or an empty selection mean all 40; a string is split on commas; the
    aliases ``identity``, ``abm`` and ``rendered`` name the subsets above. Unknown names raise
    ``ValueError`` listing them.
    """
    if names is None:
        return list(ATTRIBUTES)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    subsets = {"all": ATTRIBUTES, "identity": IDENTITY_ATTRIBUTES,
               "abm": ABM_REPORTED_ATTRIBUTES, "rendered": RENDERED_ATTRIBUTES}
    chosen: set[str] = set()
    for name in names:
        if name in subsets:
            chosen.update(subsets[name])
        elif name in ATTRIBUTE_INDEX:
            chosen.add(name)
        else:
            raise ValueError(f"unknown attribute {name!r}; expected one of the 40 CelebA names "
                             f"(e.g. {ATTRIBUTES[0]}) or a subset {sorted(subsets)}")
    if not chosen:
        return list(ATTRIBUTES)
    return [a for a in ATTRIBUTES if a in chosen]
