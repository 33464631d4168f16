"""The registry on its own: entries, names, lookups and errors (no plugin is loaded here)."""

from __future__ import annotations

import pytest

from segzoo._registry import (
    DuplicateNameError,
    Recipe,
    Registry,
    RegistryError,
    UnknownNameError,
    describe_builder,
    filter_names,
    make_entry,
    unknown_name_message,
)


def backbone_builder(*, output_stride: int = 32, pretrained: bool = False):
    """A backbone builder for tests.

    More text that is not the description."""


def family_builder(model_name: str, *, output_stride: int | None = None, **kwargs):
    """A family of backbones."""


def head_builder(feature_info, num_classes, *, in_feature: str = "out", channels: int | None = None):
    """A head builder for tests."""


def entry(kind="head", name="h", obj=head_builder, plugin="p", **kw):
    return make_entry(kind, name, obj, plugin=plugin, **kw)


def filled(*entries) -> Registry:
    reg = Registry()
    for e in entries:
        reg.add(e)
    return reg


# -- make_entry -----------------------------------------------------------------------------------


def test_make_entry_records_the_provider_and_takes_the_docstring_as_description():
    e = make_entry(
        "backbone", "bb", backbone_builder, plugin="mine", distribution="segzoo-mine", version="1.0"
    )
    assert (e.kind, e.name, e.obj) == ("backbone", "bb", backbone_builder)
    assert e.description == "A backbone builder for tests."
    assert e.provider() == {"plugin": "mine", "distribution": "segzoo-mine", "version": "1.0"}
    assert e.provided_by() == "plugin 'mine' (segzoo-mine 1.0)"
    assert make_entry("head", "h", head_builder, plugin="rt").provided_by() == "plugin 'rt'"
    assert make_entry("head", "h", head_builder, plugin="p", description="mine").description == "mine"


@pytest.mark.parametrize("name", ["a.b", "", "-x", "x y", "a/b", "x:y", "x:*"])
def test_make_entry_refuses_bad_head_names(name):
    with pytest.raises(RegistryError, match="invalid head name"):
        entry("head", name)


def test_make_entry_refuses_a_name_that_is_not_a_string():
    with pytest.raises(RegistryError, match="names must be strings"):
        entry("head", 3)


@pytest.mark.parametrize("name", ["resnet-50_v2", "timm:*", "timm:convnext_tiny", "hf:org/model.v1"])
def test_backbone_names_may_carry_a_family_prefix(name):
    assert entry("backbone", name, backbone_builder).name == name


@pytest.mark.parametrize("name", ["timm:", ":x", "timm:*x", "a.b", "timm:../x"])
def test_bad_backbone_names_are_refused(name):
    with pytest.raises(RegistryError, match=r"invalid backbone name.*'prefix:\*'"):
        entry("backbone", name, backbone_builder)


def test_family_entries_know_they_are_families():
    assert entry("backbone", "timm:*", family_builder).is_family
    assert not entry("backbone", "timm:resnet50", family_builder).is_family


def test_make_entry_refuses_a_builder_that_is_not_callable():
    with pytest.raises(RegistryError, match="the builder must be callable, got 'fcn'"):
        entry("head", "h", "fcn")


def test_builders_take_no_recipe_fields():
    with pytest.raises(RegistryError, match=r"unexpected fields \['num_classes'\]"):
        entry("head", "h", head_builder, num_classes=3)


def test_a_model_is_a_recipe_given_by_keyword_fields():
    e = make_entry("model", "m", plugin="p", backbone="resnet50", head="fcn", num_classes=3, aux=True)
    assert isinstance(e.obj, Recipe)
    assert (e.obj.name, e.obj.backbone, e.obj.head, e.obj.num_classes, e.obj.aux) == (
        "m",
        "resnet50",
        "fcn",
        3,
        True,
    )
    assert e.description == "fcn on resnet50"


def test_a_model_refuses_a_builder_and_unknown_fields():
    with pytest.raises(RegistryError, match="keyword fields only"):
        make_entry("model", "m", head_builder, plugin="p", backbone="b", head="h")
    with pytest.raises(RegistryError, match=r"unknown field\(s\) \['num_clases'\]; valid fields are \["):
        make_entry("model", "m", plugin="p", backbone="b", head="h", num_clases=3)
    with pytest.raises(RegistryError, match="recipe 'm'"):
        make_entry("model", "m", plugin="p", head="h")  # no backbone


# -- Recipe ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [0, -1, True, 2.0, "3"])
def test_recipe_num_classes_must_be_a_positive_int(num_classes):
    with pytest.raises(RegistryError, match="num_classes must be a positive int"):
        Recipe("m", backbone="b", head="h", num_classes=num_classes)


@pytest.mark.parametrize("field", ["backbone", "head", "aux_head"])
@pytest.mark.parametrize("value", ["", None, 3])
def test_recipe_parts_must_be_names(field, value):
    kw = {"backbone": "b", "head": "h", field: value}
    with pytest.raises(RegistryError, match=f"{field} must be a registered name"):
        Recipe("m", **kw)


def test_recipe_labels_become_a_tuple_of_num_classes():
    assert Recipe("m", backbone="b", head="h", num_classes=2, labels=["a", "b"]).labels == ("a", "b")
    with pytest.raises(RegistryError, match="3 labels for num_classes=2"):
        Recipe("m", backbone="b", head="h", num_classes=2, labels=["a", "b", "c"])


def test_recipe_weights_tags_and_default_tag():
    tv = {"num_classes": 21, "url": "https://example.org/w.pth"}
    r = Recipe("m", backbone="b", head="h", weights={"first": tv, "second": tv})
    assert r.default_tag == "first"  # the first tag unless one is named
    assert r.weights["second"].num_classes == 21
    assert Recipe("m", backbone="b", head="h", weights={"a": tv, "b": tv}, default_tag="b").default_tag == "b"
    with pytest.raises(RegistryError, match="default_tag 'c' is not in its weights"):
        Recipe("m", backbone="b", head="h", weights={"a": tv}, default_tag="c")
    with pytest.raises(RegistryError, match="invalid weight tag 'a.b'"):
        Recipe("m", backbone="b", head="h", weights={"a.b": tv})
    with pytest.raises(RegistryError, match="weight tag 'a': unknown weight tag field"):
        Recipe("m", backbone="b", head="h", weights={"a": {**tv, "sha": "00"}})
    with pytest.raises(RegistryError, match="weight tag 'a': a weight tag needs hf_hub_id or url"):
        Recipe("m", backbone="b", head="h", weights={"a": {"num_classes": 2}})


def test_recipe_field_names_are_what_register_models_accepts():
    names = Recipe.field_names()
    assert "name" not in names
    assert {"backbone", "head", "num_classes", "aux", "backbone_kwargs", "labels", "weights"} <= set(names)


# -- Registry -------------------------------------------------------------------------------------


def test_add_and_get_by_kind():
    h, b = entry("head", "fcn"), entry("backbone", "fcn", backbone_builder)
    reg = filled(h, b)
    assert reg.get("head", "fcn") is h and reg.get("backbone", "fcn") is b  # kinds are separate
    assert reg.entries("head") == [h]
    assert reg.names("model") == []


def test_a_duplicate_name_names_both_plugins():
    reg = filled(make_entry("head", "fcn", head_builder, plugin="segzoo.heads.fcn", distribution="segzoo"))
    clash = make_entry(
        "head", "fcn", head_builder, plugin="theirs", distribution="segzoo-theirs", version="2"
    )
    with pytest.raises(DuplicateNameError) as err:
        reg.add(clash)
    msg = str(err.value)
    assert "head 'fcn' is registered twice" in msg
    assert "plugin 'segzoo.heads.fcn' (segzoo" in msg and "plugin 'theirs' (segzoo-theirs 2)" in msg
    assert reg.get("head", "fcn").plugin == "segzoo.heads.fcn"  # the first keeps it


def test_check_new_refuses_clashes_with_the_registry_and_within_the_batch_and_adds_nothing():
    reg = filled(entry("head", "a", plugin="first"))
    with pytest.raises(DuplicateNameError, match="'first'.*'second'"):
        reg.check_new([entry("head", "b", plugin="second"), entry("head", "a", plugin="second")])
    with pytest.raises(DuplicateNameError, match="head 'c' is registered twice"):
        reg.check_new([entry("head", "c", plugin="second"), entry("head", "c", plugin="second")])
    reg.check_new([entry("head", "c", plugin="second"), entry("backbone", "a", backbone_builder)])
    assert reg.names("head") == ["a"]


def test_a_family_serves_every_name_after_its_prefix():
    fam = entry("backbone", "timm:*", family_builder)
    exact = entry("backbone", "timm:special", backbone_builder)
    reg = filled(fam, exact)
    assert reg.get("backbone", "timm:convnext_tiny") is fam
    assert reg.get("backbone", "timm:special") is exact  # an exact name wins over the family
    with pytest.raises(UnknownNameError, match="unknown backbone 'other:convnext_tiny'"):
        reg.get("backbone", "other:convnext_tiny")
    with pytest.raises(UnknownNameError):
        reg.get("backbone", "timm")


def test_names_sort_naturally_and_filter():
    names = ["resnet152", "resnet18", "resnet50", "Resnet101", "mobilenet_v3_large", "resnet34"]
    reg = filled(*(entry("backbone", n, backbone_builder) for n in names))
    assert reg.names("backbone") == [
        "mobilenet_v3_large",
        "resnet18",
        "resnet34",
        "resnet50",
        "Resnet101",
        "resnet152",
    ]
    assert reg.names("backbone", "resnet1*") == ["resnet18", "Resnet101", "resnet152"]  # case-insensitive
    assert reg.names("backbone", ["mob*", "*34"]) == ["mobilenet_v3_large", "resnet34"]
    assert reg.names("backbone", "resnet*", exclude=["*1?", "*50"]) == ["resnet34", "Resnet101", "resnet152"]
    assert [e.name for e in reg.entries("backbone")] == reg.names("backbone")


def test_filter_names_include_and_exclude_patterns():
    names = [
        "fcn_resnet50",
        "deeplabv3_resnet50",
        "deeplabv3_mobilenet_v3_large",
        "lraspp_mobilenet_v3_large",
    ]
    assert filter_names(names) == names
    assert filter_names(names, "") == names
    assert filter_names(names, "deeplab*") == names[1:3]
    assert filter_names(names, ("*resnet*", "lraspp*")) == [names[0], names[1], names[3]]
    assert filter_names(names, "*", exclude="*mobilenet*") == names[:2]
    assert filter_names(names, exclude=("fcn*", "lraspp*")) == names[1:3]
    assert filter_names(names, "DEEPLABV3_[rm]*", exclude="") == names[1:3]
    assert filter_names(names, "resnet") == []  # a pattern, not a substring


def test_unknown_name_lists_the_closest_names_and_counts_only_that_kind():
    reg = filled(
        *(
            make_entry("model", n, plugin="p", backbone="b", head="h")
            for n in ("fcn_resnet50", "fcn_resnet101")
        )
    )
    with pytest.raises(UnknownNameError) as err:
        reg.get("model", "fcn_resnet05")
    assert str(err.value) == (
        "unknown model 'fcn_resnet05'. Closest: fcn_resnet50, fcn_resnet101. "
        "See segzoo.list_models() for all 2 models."
    )


def test_unknown_name_message_with_other_kinds_and_a_note():
    msg = unknown_name_message(
        "model",
        "deeplabv3plu",
        ["deeplabv3_resnet50", "fcn_resnet50"],
        also=["deeplabv3plus", "fcn"],
        note="N.",
    )
    assert msg.startswith("unknown model 'deeplabv3plu'. Closest: deeplabv3plus")
    assert "for all 2 models. N." in msg  # heads are suggested, not counted
    assert (
        unknown_name_message("head", "zz", [])
        == "unknown head 'zz'. See segzoo.list_heads() for all 0 heads."
    )
    assert unknown_name_message("model, backbone or head", "x", ["x1"]).endswith("See `segzoo list`.")
    # no close match by similarity: names containing it (or contained in it) instead
    assert "Closest: my_extra_long_resnet50_variant." in unknown_name_message(
        "backbone", "resnet50", ["my_extra_long_resnet50_variant", "vit"]
    )


def test_a_registry_note_is_added_to_unknown_names():
    reg = filled(entry("head", "fcn"))
    reg.note = "Not loaded: SEGZOO_PLUGINS excludes the installed plugin(s) 'x'."
    with pytest.raises(UnknownNameError, match=r"for all 1 heads\. Not loaded: SEGZOO_PLUGINS excludes"):
        reg.get("head", "unet")


# -- describe_builder -----------------------------------------------------------------------------


def test_describe_builder_lists_keyword_arguments_without_the_positionals_segzoo_fills_in():
    assert describe_builder(entry("backbone", "bb", backbone_builder)) == {
        "output_stride": 32,
        "pretrained": False,
    }
    assert describe_builder(entry("backbone", "fam:*", family_builder)) == {"output_stride": None}
    assert describe_builder(entry("head", "h", head_builder)) == {"in_feature": "out", "channels": None}

    def required(*, size):
        """A builder with a required keyword."""

    assert describe_builder(entry("backbone", "req", required)) == {"size": None}
