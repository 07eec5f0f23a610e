"""Each detector with valid and invalid cases from public references, and the hard
negatives of issue 3. Every case runs on every engine (native, hyperscan, python)."""

from __future__ import annotations

import pytest

from trustzones.dlp import Scanner
from trustzones.dlp._validators import card_brand, iban_valid, luhn_valid, ssn_valid

ENGINES = ["native", "hyperscan", "python"]
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


@pytest.fixture(scope="module", params=ENGINES)
def scanner(request: pytest.FixtureRequest) -> Scanner:
    return Scanner(engine=request.param)


def types_in(scanner: Scanner, text: str, field: str | None = None) -> list[tuple[str, str]]:
    return [(f.type, text[f.start : f.end]) for f in scanner.scan_text(text, field=field)]


# Test numbers published by the card networks and payment processors for testing.
NETWORK_TEST_CARDS = [
    ("4111111111111111", "visa"),
    ("4012888888881881", "visa"),
    ("4222222222222", "visa"),  # 13 digits
    ("4000056655665556", "visa"),
    ("5555555555554444", "mastercard"),
    ("5105105105105100", "mastercard"),
    ("2221000000000009", "mastercard"),  # 2-series
    ("2223003122003222", "mastercard"),
    ("2720992720992729", "mastercard"),
    ("378282246310005", "amex"),
    ("371449635398431", "amex"),
    ("378734493671000", "amex"),
    ("6011111111111117", "discover"),
    ("6011000990139424", "discover"),
    ("6445644564456445", "discover"),
    ("30569309025904", "diners"),
    ("38520000023237", "diners"),
    ("36227206271667", "diners"),
    ("3530111333300000", "jcb"),
    ("3566002020360505", "jcb"),
    ("6200000000000005", "unionpay"),
    ("6205500000000000004", "unionpay"),  # 19 digits
]


@pytest.mark.parametrize(("number", "brand"), NETWORK_TEST_CARDS)
def test_card_network_test_numbers(scanner: Scanner, number: str, brand: str) -> None:
    assert luhn_valid(number)
    assert card_brand(number) == brand
    assert types_in(scanner, f"card {number} ok") == [("CREDIT_CARD", number)]


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "3782 822463 10005",  # Amex 4-6-5
        "3056 930902 5904",  # Diners 4-6-4
        "6205 5000 0000 0000 004",  # 19 digits 4-4-4-4-3
        "2221000000000009".translate(FULLWIDTH),
        "4111 1111 1111 1111".translate(ARABIC_INDIC),
        "4111\u200b1111\u200b1111\u200b1111",  # zero-width spaces
    ],
)
def test_card_formats(scanner: Scanner, text: str) -> None:
    found = scanner.scan_text(text)
    assert [(f.type, f.start, f.end) for f in found] == [("CREDIT_CARD", 0, len(text))]


def test_card_as_json_number(scanner: Scanner) -> None:
    found = scanner.scan_record({"payment": {"pan": 5555555555554444}})
    assert [(f.type, f.path, f.start, f.end) for f in found] == [
        ("CREDIT_CARD", "payment.pan", 0, 16)
    ]


def test_card_followed_or_preceded_by_other_numbers(scanner: Scanner) -> None:
    text = "cvv after: 4111 1111 1111 1111 123 and before: 12 5555 5555 5555 4444"
    assert types_in(scanner, text) == [
        ("CREDIT_CARD", "4111 1111 1111 1111"),
        ("CREDIT_CARD", "5555 5555 5555 4444"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112",  # Luhn fails
        "4111 1111 1111 1112",
        "5555555555554440",
        "411111111111111",  # a Visa of 15 digits
        "1234567812345670",  # Luhn-valid, no network starts with 1
        "0000000000000000",
        "41111111111111111111",  # 20 digits
        "id_4111111111111111",  # part of an identifier
        "0.4111111111111111",  # digits of a decimal number
        "9400 1118 4922 3456 7890 12",  # USPS tracking number, 22 digits
    ],
)
def test_card_invalid(scanner: Scanner, text: str) -> None:
    assert types_in(scanner, text) == []


def test_card_context_lowers_the_bar(scanner: Scanner) -> None:
    # Luhn-valid but of no network in the IIN table: only in a field named for cards.
    assert types_in(scanner, "1234567812345670", field="card_number") == [
        ("CREDIT_CARD", "1234567812345670")
    ]
    assert types_in(scanner, "1234567812345670", field="order_id") == []


# SSA rules: no area 000, 666 or 900-999, no group 00, no serial 0000.
@pytest.mark.parametrize(
    "ssn",
    ["123-45-6789", "001-01-0001", "665-12-3456", "667-12-3456", "899-99-9999", "123 45 6789"],
)
def test_ssn_valid(scanner: Scanner, ssn: str) -> None:
    assert ssn_valid(ssn.replace("-", "").replace(" ", ""))
    assert types_in(scanner, f"ssn {ssn}") == [("US_SSN", ssn)]


@pytest.mark.parametrize(
    "ssn",
    [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "999-12-3456",
        "123-00-4567",
        "123-45-0000",
        "078-05-1120",
        "219-09-9999",
    ],
)
def test_ssn_invalid(scanner: Scanner, ssn: str) -> None:
    assert not ssn_valid(ssn.replace("-", ""))
    assert types_in(scanner, f"ssn {ssn}") == []


def test_ssn_bare_digits_need_context(scanner: Scanner) -> None:
    assert types_in(scanner, "123456789") == []
    assert types_in(scanner, "123456789", field="ssn") == [("US_SSN", "123456789")]
    assert types_in(scanner, "SSN: 123456789") == [("US_SSN", "123456789")]
    found = scanner.scan_record({"customer": {"socialSecurityNumber": 123456789}})
    assert [(f.type, f.path) for f in found] == [("US_SSN", "customer.socialSecurityNumber")]
    assert types_in(scanner, "987654321", field="ssn") == []  # area 9xx


# Example IBANs of the SWIFT IBAN registry.
REGISTRY_IBANS = [
    "DE89370400440532013000",
    "GB29NWBK60161331926819",
    "FR1420041010050500013M02606",
    "ES9121000418450200051332",
    "IT60X0542811101000000123456",
    "NL91ABNA0417164300",
    "BE68539007547034",
    "CH9300762011623852957",
    "AT611904300234573201",
    "PL61109010140000071219812874",
    "SE4550000000058398257466",
    "NO9386011117947",
    "PT50000201231234567890154",
    "IE29AIBK93115212345678",
    "DK5000400440116243",
    "FI2112345600000785",
    "SA0380000000608010167519",
    "GR1601101250000000012300695",
    "HU42117730161111101800000000",
    "LU280019400644750000",
    "MT84MALT011000012345MTLCAST001S",
    "BR1800360305000010009795493C1",
    "KW81CBKU0000000000001234560101",
    "AE070331234567890123456",
    "TR330006100519786457841326",
    "IS140159260076545510730339",
    "CY17002001280000001200527600",
    "EE382200221020145685",
    "LT121000011101001000",
    "LV80BANK0000435195001",
    "SK3112000000198742637541",
    "SI56263300012039086",
    "CZ6508000000192000145399",
    "BG80BNBG96611020345678",
    "HR1210010051863000160",
    "MC5811222000010123456789030",
    "SM86U0322509800000000270100",
    "LI21088100002324013AA",
]


@pytest.mark.parametrize("iban", REGISTRY_IBANS)
def test_iban_registry_examples(scanner: Scanner, iban: str) -> None:
    assert iban_valid(iban)
    spaced = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    assert types_in(scanner, f"pay to {iban}.") == [("IBAN", iban)]
    assert types_in(scanner, f"pay to {spaced}, thanks") == [("IBAN", spaced)]
    assert types_in(scanner, iban.lower()) == [("IBAN", iban.lower())]


@pytest.mark.parametrize(
    "text",
    [
        "DE88370400440532013000",  # wrong check digits
        "DE89 3704 0044 0532 0130 01",
        "DE8937040044053201300",  # one character short for DE
        "XX89370400440532013000",  # no such country
        "GB29NWBK6016133192681X",  # BBAN structure: GB ends in digits
    ],
)
def test_iban_invalid(scanner: Scanner, text: str) -> None:
    assert types_in(scanner, text) == []


def test_iban_spaced_followed_by_words(scanner: Scanner) -> None:
    text = "IBAN DE89 3704 0044 0532 0130 00 ABCD is mine"
    assert types_in(scanner, text) == [("IBAN", "DE89 3704 0044 0532 0130 00")]


@pytest.mark.parametrize(
    "email",
    [
        "john.smith@example.com",
        "a+tag@mail.example.co.uk",
        "x_y-z@sub.domain.io",
        "Ünïcode@example.de",
    ],
)
def test_email(scanner: Scanner, email: str) -> None:
    assert types_in(scanner, f"mail <{email}> now") == [("EMAIL_ADDRESS", email)]


@pytest.mark.parametrize("text", ["icon@2x.png", "user@localhost", "not an @ email", "a@b"])
def test_email_invalid(scanner: Scanner, text: str) -> None:
    assert types_in(scanner, text) == []


@pytest.mark.parametrize(
    "phone",
    [
        "(415) 555-0132",
        "415-555-0132",
        "415.555.0132",
        "1-415-555-0132",
        "+1 415 555 0132",
        "+1 (415) 555-0132",
        "+14155550132",
        "+44 20 7946 0958",
        "+33 1 23 45 67 89",
        "+49 (0)30 12345678",
        "+91 98765 43210",
    ],
)
def test_phone(scanner: Scanner, phone: str) -> None:
    assert types_in(scanner, f"call {phone} today") == [("PHONE_NUMBER", phone)]


@pytest.mark.parametrize(
    "text",
    [
        "(115) 555-0132",  # NANP area codes start with 2-9
        "415-155-0132",  # so do exchanges
        "+1 415 555 013",  # +1 needs 10 more digits
        "+999 1234 5678",  # no such calling code
        "04.507236",  # a timestamp fraction (Presidio fires on it)
        "2024-03-15",
    ],
)
def test_phone_invalid(scanner: Scanner, text: str) -> None:
    assert types_in(scanner, text) == []


def test_phone_bare_digits_need_context(scanner: Scanner) -> None:
    assert types_in(scanner, "4155550132") == []
    assert types_in(scanner, "4155550132", field="mobile_phone") == [("PHONE_NUMBER", "4155550132")]


@pytest.mark.parametrize(
    "ip",
    [
        "192.168.1.1",
        "8.8.8.8",
        "255.255.255.255",
        "2001:db8::1",
        "fe80::1ff:fe23:4567:890a",
        "::1",
        "2001:0db8:0000:0000:0000:ff00:0042:8329",
        "::ffff:192.0.2.128",
    ],
)
def test_ip(scanner: Scanner, ip: str) -> None:
    assert types_in(scanner, f"from {ip} at noon") == [("IP_ADDRESS", ip)]


@pytest.mark.parametrize(
    "text",
    [
        "256.1.1.1",
        "1.2.3",
        "1.2.3.4.5",
        "1.3.6.1.4.1.311",
        "v1.2.3.4",
        "version 2.0.0.1",
        "00:1A:2B:3C:4D:5E",
        "std::vector",
        "10:22:31",
    ],
)
def test_ip_invalid(scanner: Scanner, text: str) -> None:
    assert types_in(scanner, text) == []


def test_ip_in_version_field_is_not_an_ip(scanner: Scanner) -> None:
    assert types_in(scanner, "2.0.0.1", field="app_version") == []
    assert types_in(scanner, "2.0.0.1", field="client_ip") == [("IP_ADDRESS", "2.0.0.1")]


JWT_EXAMPLE = (  # the example token of RFC 7519 section 3.1 tools (HS256, "John Doe")
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwi"
    "aWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\n"
    "aFDrBz9vFqU4yV7W+7zBXwjA0zxfmmVq0k1d3SU=\n-----END RSA PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    ("type_", "value"),
    [
        ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),  # the example in AWS's documentation
        ("AWS_ACCESS_KEY_ID", "ASIAY34FZKBOKMUTVV7A"),
        ("GITHUB_TOKEN", "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"),
        ("GITHUB_TOKEN", "github_pat_11ABCDEFG0123456789abc_" + "x" * 59),
        ("JWT", JWT_EXAMPLE),
        ("PRIVATE_KEY", PEM),
        (
            "PRIVATE_KEY",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
            "-----END OPENSSH PRIVATE KEY-----",
        ),
        (
            "PRIVATE_KEY",
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF0\n-----END PGP PRIVATE KEY BLOCK-----",
        ),
        ("GOOGLE_API_KEY", "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K-L_mNoPqRsTu"),
        ("SLACK_TOKEN", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
        ("STRIPE_SECRET_KEY", "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"),
    ],
)
def test_secrets(scanner: Scanner, type_: str, value: str) -> None:
    assert types_in(scanner, f"leaked: {value} (rotate)") == [(type_, value)]


def test_private_key_escaped_in_json_text(scanner: Scanner) -> None:
    escaped = PEM.replace("\n", "\\n")
    assert types_in(scanner, escaped) == [("PRIVATE_KEY", escaped)]


@pytest.mark.parametrize(
    "text",
    [
        "eyJhbGciOiJub25lIn0.bm90IGpzb24.",  # payload is not JSON
        "eyJub3RhbGciOjF9.eyJzdWIiOiIxIn0.sig",  # header has no alg
        "AKIAIOSFODNN7EXAMPL",  # 19 characters
        "ghp_short",
    ],
)
def test_secrets_invalid(scanner: Scanner, text: str) -> None:
    assert types_in(scanner, text) == []


# The hard negatives named in issue 3: none may fire.
HARD_NEGATIVES = [
    "4111111111111121",  # Luhn-invalid digit run
    "5500 0000 0000 0005",  # Luhn-invalid
    "666-12-3456",  # invalid SSN area
    "912-45-6789",
    "GB28NWBK60161331926819",  # IBAN with a bad checksum
    "2024-03-15T10:22:31.507236Z",  # ISO timestamps
    "2024-03-15 10:22:31+02:00",
    "$1,234.56",  # prices
    "EUR 1234567.89",
    "129.99",
    "550e8400-e29b-41d4-a716-446655440000",  # UUIDs
    "39625011-8999-4319-8284-9119af7729cf",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # hex digests
    "d41d8cd98f00b204e9800998ecf8427e",
    "ORD-2024-001234",  # order and tracking numbers
    "#100045678",
    "PO 4500012345",
    "1Z999AA10123456784",
    "7489 1234 5678",
    "9400 1000 0000 0000 0000 00",
    "94103-1234",  # ZIP+4
    "v2.14.1",  # version strings
    "3.11.7",
    "10.0.19041.1",
    "1.2.3-rc1",
    "0.30000000000000004",
    "1710498151507",  # epoch milliseconds
    "**** **** **** 1111",  # an already masked card
]


@pytest.mark.parametrize("text", HARD_NEGATIVES)
def test_hard_negatives(scanner: Scanner, text: str) -> None:
    assert types_in(scanner, text) == []
    assert types_in(scanner, f"ref {text}, see notes") == []
