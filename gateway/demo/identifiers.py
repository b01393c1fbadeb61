"""Check-digit rules of the identifiers in the demo data.

Salesforce ids get the case-safe suffix, an Italian Partita IVA its Luhn-style
check digit, and an Italian IBAN its CIN letter and ISO 7064 mod-97 digits.
"""

from __future__ import annotations

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CASE_SAFE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
SALESFORCE_ID_SPACE = 62**9
"""Number of distinct 9-character base-62 record numbers in a Salesforce id."""
# Coprime with 62, so serial -> (serial * stride + offset) % 62**9 is a bijection
# and ids are unique without a lookup.
_ID_STRIDE = 1_000_000_007

# Italian BBAN CIN: weights of characters at odd positions, where digit d and
# letter number d (A=0) share a weight. Even positions weigh the digit value or
# the letter number.
_CIN_ODD_WEIGHTS = (1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16,
                    10, 22, 25, 24, 23)


def case_safe_id(salesforce_id: str) -> str:
    """Return the 18-character case-safe form of a 15- or 18-character Salesforce id.

    Each of the three 5-character chunks yields a 5-bit number, with bit i set
    when character i is an uppercase letter, and the number picks a suffix
    character from A-Z0-5. Raises ValueError for any other length.
    """
    if len(salesforce_id) == 18:
        return salesforce_id
    if len(salesforce_id) != 15:
        raise ValueError(f"a Salesforce id has 15 or 18 characters, got {len(salesforce_id)}")
    suffix = ""
    for start in (0, 5, 10):
        chunk = salesforce_id[start:start + 5]
        bits = sum(1 << i for i, char in enumerate(chunk) if "A" <= char <= "Z")
        suffix += _CASE_SAFE_ALPHABET[bits]
    return salesforce_id + suffix


def salesforce_id(key_prefix: str, serial: int, offset: int) -> str:
    """Build the case-safe id number ``serial`` of an object with a 3-character key prefix.

    Distinct serials below ``SALESFORCE_ID_SPACE`` give distinct ids for a fixed
    ``offset``. The pod and reserved characters ("5g0") are fixed.
    """
    number = (serial * _ID_STRIDE + offset) % SALESFORCE_ID_SPACE
    digits = ""
    for _ in range(9):
        number, remainder = divmod(number, 62)
        digits = _BASE62[remainder] + digits
    return case_safe_id(f"{key_prefix}5g0{digits}")


def partita_iva_check_digit(first_ten: str) -> int:
    """Compute the 11th digit of an Italian Partita IVA from its first ten digits.

    Digits at odd positions add their value, digits at even positions add
    twice their value minus 9 when that exceeds 9, and the check digit brings
    the sum to a multiple of 10.
    """
    total = 0
    for position, char in enumerate(first_ten, start=1):
        digit = int(char)
        if position % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return (10 - total % 10) % 10


def italian_cin(abi: str, cab: str, account: str) -> str:
    """Compute the CIN check letter of an Italian BBAN from ABI, CAB and account number."""
    total = 0
    for position, char in enumerate(abi + cab + account, start=1):
        index = int(char) if char.isdigit() else ord(char.upper()) - ord("A")
        total += _CIN_ODD_WEIGHTS[index] if position % 2 == 1 else index
    return chr(ord("A") + total % 26)


def iban_check_digits(country: str, bban: str) -> str:
    """Compute the two ISO 7064 mod-97 check digits of an IBAN."""
    numeric = "".join(str(int(char, 36)) for char in bban + country + "00")
    return f"{98 - int(numeric) % 97:02d}"


def italian_iban(abi: str, cab: str, account: str) -> str:
    """Build a compact Italian IBAN (27 characters, no spaces) with valid CIN and check digits."""
    bban = italian_cin(abi, cab, account) + abi + cab + account
    return "IT" + iban_check_digits("IT", bban) + bban
