"""SigV4 against AWS's published test-suite vectors (aws-sig-v4-test-suite, credentials
AKIDEXAMPLE, 2015-08-30T12:36:00Z, us-east-1, service "service") and the documented
signing-key derivation example."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from providers.aws_sigv4 import Credentials, canonical_query, canonical_uri, sign, signing_key

SUITE = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
AT = datetime(2015, 8, 30, 12, 36, 0, tzinfo=UTC)
SCOPE = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"
STS_TOKEN = (
    "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRq"
    "TflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75Y"
    "U9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9K"
    "SYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA=="
)


def test_signing_key_matches_the_documented_derivation_example():
    key = signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


@pytest.mark.parametrize(
    ("name", "method", "url", "headers", "body", "signed_headers", "signature"),
    [
        (
            "get-vanilla",
            "GET",
            "https://example.amazonaws.com/",
            {},
            b"",
            "host;x-amz-date",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        (
            "get-vanilla-query-order-key-case",
            "GET",
            "https://example.amazonaws.com/?Param2=value2&Param1=value1",
            {},
            b"",
            "host;x-amz-date",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        ),
        (
            "post-vanilla",
            "POST",
            "https://example.amazonaws.com/",
            {},
            b"",
            "host;x-amz-date",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        ),
        (
            "post-vanilla-query",
            "POST",
            "https://example.amazonaws.com/?Param1=value1",
            {},
            b"",
            "host;x-amz-date",
            "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
        ),
        (
            "post-header-key-sort",
            "POST",
            "https://example.amazonaws.com/",
            {"My-Header1": "value1"},
            b"",
            "host;my-header1;x-amz-date",
            "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c",
        ),
        (
            "get-header-value-trim",
            "GET",
            "https://example.amazonaws.com/",
            {"My-Header1": " value1", "My-Header2": ' "a   b   c"'},
            b"",
            "host;my-header1;my-header2;x-amz-date",
            "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
        ),
        (
            "post-x-www-form-urlencoded",
            "POST",
            "https://example.amazonaws.com/",
            {"Content-Type": "application/x-www-form-urlencoded"},
            b"Param1=value1",
            "content-type;host;x-amz-date",
            "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
        ),
    ],
)
def test_aws_test_suite_vectors(name, method, url, headers, body, signed_headers, signature):
    signed = sign(method, url, headers, body, SUITE, "us-east-1", "service", now=AT)
    assert signed.headers["Authorization"] == (
        f"AWS4-HMAC-SHA256 Credential={SCOPE}, SignedHeaders={signed_headers}, Signature={signature}"
    ), name
    assert signed.headers["X-Amz-Date"] == "20150830T123600Z"


def test_get_vanilla_intermediate_steps():
    signed = sign("GET", "https://example.amazonaws.com/", {}, b"", SUITE, "us-east-1", "service", now=AT)
    assert signed.canonical_request == (
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert signed.string_to_sign == (
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
        "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
    )


def test_post_sts_header_before_signs_the_session_token():
    creds = Credentials(SUITE.access_key_id, SUITE.secret_access_key, STS_TOKEN)
    signed = sign("POST", "https://example.amazonaws.com/", {}, b"", creds, "us-east-1", "service", now=AT)
    assert signed.headers["Authorization"] == (
        f"AWS4-HMAC-SHA256 Credential={SCOPE}, SignedHeaders=host;x-amz-date;x-amz-security-token, "
        "Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"
    )
    assert signed.headers["X-Amz-Security-Token"] == STS_TOKEN


def test_utf8_path_and_query_are_encoded_per_the_suite():
    # get-utf8: the raw path "/ሴ" is signed as "/%E1%88%B4"
    assert canonical_uri("/\u1234") == "/%E1%88%B4"
    signed = sign(
        "GET", "https://example.amazonaws.com/\u1234", {}, b"", SUITE, "us-east-1", "service", now=AT
    )
    assert signed.signature == "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"
    assert canonical_query("Param2=value2&Param1=value1") == "Param1=value1&Param2=value2"


def test_wire_encoded_model_id_is_encoded_again():
    # A Bedrock model id's ':' goes on the wire as %3A and is signed as %253A.
    assert (
        canonical_uri("/model/anthropic.claude-v2%3A1/converse")
        == "/model/anthropic.claude-v2%253A1/converse"
    )


def test_credentials_repr_hides_the_secret():
    assert "EXAMPLEKEY" not in repr(SUITE)
