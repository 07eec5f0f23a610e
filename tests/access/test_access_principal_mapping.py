"""Kafka's ssl.principal.mapping.rules: the examples of Kafka's security documentation, and
the behaviour Kafka's own SslPrincipalMapper tests pin (valid/invalid rules, splitting)."""

from __future__ import annotations

import pytest

from trustzones.access import NoMatchingRule, PrincipalMapper
from trustzones.errors import ConfigError

# docs/security.html, "Customizing SSL User Name"
KAFKA_DOCS_RULES = (
    "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/,"
    "RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$2/L,"
    "RULE:^.*[Cc][Nn]=([a-zA-Z0-9.]*).*$/$1/L,"
    "DEFAULT"
)


@pytest.mark.parametrize(
    ("dn", "name"),
    [
        ("CN=serviceuser,OU=ServiceUsers,O=Unknown,L=Unknown,ST=Unknown,C=Unknown", "serviceuser"),
        ("CN=adminUser,OU=Admin,O=Unknown,L=Unknown,ST=Unknown,C=Unknown", "adminuser@admin"),
    ],
)
def test_kafka_documentation_examples(dn: str, name: str) -> None:
    assert PrincipalMapper.from_rules(KAFKA_DOCS_RULES).name_for(dn) == name


def test_kafka_documentation_rules_spread_over_lines_parse_the_same() -> None:
    multiline = KAFKA_DOCS_RULES.replace(",RULE", ",\nRULE").replace(",DEFAULT", ",\nDEFAULT")
    assert (
        PrincipalMapper.from_rules(multiline).rules
        == PrincipalMapper.from_rules(KAFKA_DOCS_RULES).rules
    )


def test_mapper_examples_from_kafkas_tests() -> None:
    mapper = PrincipalMapper.from_rules(
        ", ".join(
            [
                "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/L",
                "RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$2/L",
                "RULE:^cn=(.*?),ou=(.*?),dc=(.*?),dc=(.*?)$/$1@$2/U",
                "RULE:^.*[Cc][Nn]=([a-zA-Z0-9.]*).*$/$1/U",
                "DEFAULT",
            ]
        )
    )
    assert mapper.name_for("CN=Duke,OU=ServiceUsers,O=Org,C=US") == "duke"
    assert mapper.name_for("CN=Duke,OU=SME,O=mycp,L=Fulton,ST=MD,C=US") == "duke@sme"
    assert mapper.name_for("cn=duke,ou=sme,dc=mycp,dc=com") == "DUKE@SME"
    assert mapper.name_for("cN=duke,OU=JavaSoft,O=Sun Microsystems") == "DUKE"
    assert (
        mapper.name_for("OU=JavaSoft,O=Sun Microsystems,C=US")
        == "OU=JavaSoft,O=Sun Microsystems,C=US"
    )


def test_escaped_comma_in_a_common_name() -> None:
    mapper = PrincipalMapper.from_rules(r"RULE:^CN=((\\, *|\w)+)(,.*|$)/$1/,DEFAULT")
    assert mapper.name_for(r"CN=Tkac\, Adam,OU=ITZ,DC=geodis,DC=cz") == r"Tkac\, Adam"


@pytest.mark.parametrize(
    "rules",
    [
        "DEFAULT",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/L, DEFAULT",
        "RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$2/",
        "RULE:^.*[Cc][Nn]=([a-zA-Z0-9.]*).*$/$1/L",
        "RULE:^cn=(.?),ou=(.?),dc=(.?),dc=(.?)$/$1@$2/U",
        "RULE:^CN=([^,ADEFLTU,]+)(,.*|$)/$1/",
        "RULE:^CN=([^,DEFAULT,]+)(,.*|$)/$1/",
    ],
)
def test_valid_rules(rules: str) -> None:
    assert PrincipalMapper.from_rules(rules).rules


@pytest.mark.parametrize(
    "rules",
    [
        "default",
        "DEFAUL",
        "DEFAULT/L",
        "DEFAULT/U",
        "RULE:CN=(.*?),OU=ServiceUsers.*/$1",
        "rule:^CN=(.*?),OU=ServiceUsers.*$/$1/",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/L/U",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/L",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/U",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/LU",
    ],
)
def test_invalid_rules_are_a_config_error_naming_the_rule(rules: str) -> None:
    with pytest.raises(ConfigError, match=r"invalid ssl\.principal\.mapping\.rules entry"):
        PrincipalMapper.from_rules(rules)


@pytest.mark.parametrize(
    ("expected", "rules"),
    [
        ([], ""),
        (["DEFAULT"], "DEFAULT"),
        (["RULE:/"], "RULE://"),
        (["RULE:/.*"], "RULE:/.*/"),
        (["RULE:/.*/L"], "RULE:/.*/L"),
        (["RULE:/", "DEFAULT"], "RULE://,DEFAULT"),
        (["RULE:/", "DEFAULT"], "  RULE:// ,  DEFAULT  "),
        (["RULE:   /     ", "DEFAULT"], "  RULE:   /     / ,  DEFAULT  "),
        (["RULE:  /     /U", "DEFAULT"], "  RULE:  /     /U   ,DEFAULT  "),
        (
            ["RULE:([A-Z]*)/$1/U", "RULE:([a-z]+)/$1", "DEFAULT"],
            "  RULE:([A-Z]*)/$1/U   ,RULE:([a-z]+)/$1/,   DEFAULT  ",
        ),
        ([], ",   , , ,      , , ,   "),
        (["RULE:/", "DEFAULT"], ",,RULE://,,,DEFAULT,,"),
        (["RULE: /   ", "DEFAULT"], ",  , RULE: /   /    ,,,   DEFAULT, ,   "),
        (["RULE:   /  /U", "DEFAULT"], "     ,  , RULE:   /  /U    ,,  ,DEFAULT, ,"),
        ([r"RULE:\/\\\(\)\n\t/\/\/"], r"RULE:\/\\\(\)\n\t/\/\//"),
        ([r"RULE:\**\/+/*/L", r"RULE:\/*\**/**"], r"RULE:\**\/+/*/L,RULE:\/*\**/**/"),
        (
            [
                r"RULE:,RULE:,/,RULE:,\//U",
                "RULE:,/RULE:,",
                "RULE:,RULE:,/L,RULE:,/L",
                "RULE:, DEFAULT, /DEFAULT",
                "DEFAULT",
            ],
            r"RULE:,RULE:,/,RULE:,\//U,RULE:,/RULE:,/,RULE:,RULE:,/L,RULE:,/L,"
            r"RULE:, DEFAULT, /DEFAULT/,DEFAULT",
        ),
    ],
)
def test_rule_splitting_matches_kafka(expected: list[str], rules: str) -> None:
    assert list(PrincipalMapper.from_rules(rules).rules) == expected


def test_a_dn_that_matches_no_rule_has_no_principal() -> None:
    mapper = PrincipalMapper.from_rules("RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/")
    with pytest.raises(NoMatchingRule):
        mapper.name_for("CN=intruder,OU=Elsewhere,O=Evil")
    with pytest.raises(NoMatchingRule):
        PrincipalMapper.from_rules("").name_for("CN=anyone")


def test_pattern_must_match_the_whole_dn() -> None:
    # Java's Matcher.matches(): a match of only a prefix is no match
    mapper = PrincipalMapper.from_rules("RULE:CN=([a-z]+)/$1/")
    assert mapper.name_for("CN=bob") == "bob"
    with pytest.raises(NoMatchingRule):
        mapper.name_for("CN=bob,OU=x")


def test_back_reference_to_a_missing_group_stays_literal() -> None:
    mapper = PrincipalMapper.from_rules("RULE:^CN=(.*?),O=(.*)$/$1-$3/")
    assert mapper.name_for("CN=ann,O=acme") == "ann-$3"
    # "$12" with two groups is group 1 followed by a literal "2" (Java's rule)
    assert PrincipalMapper.from_rules("RULE:^CN=(.*?),O=(.*)$/$12/").name_for("CN=a,O=b") == "a2"


def test_java_only_regex_syntax_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid regular expression"):
        PrincipalMapper.from_rules(r"RULE:^CN=(\p{Lu}+)$/$1/")
