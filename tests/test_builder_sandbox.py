"""The NF builder cannot be made to read host files: text checks refuse the ways to ask
(naming the line), Landlock refuses the reads that slip past them, resource limits bound the
compiler, and no error carries another file's text. Secrets are files this test plants."""
import time

import pytest

from serpens.runtime_cy import builder
from serpens.runtime_cy.builder import NFBuildError, compile_nf
from serpens.runtime_cy.compiler_jail import landlock_abi

from support.nfs import nf_source

SECRET = "serpens-secret-line-7f3a9c"

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(landlock_abi() < 1, reason="kernel without Landlock")]


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text(f"{SECRET} one\n{SECRET} two;\nint {SECRET.replace('-', '_')} = 1;\n")
    return path


def refused(source: str, match: str) -> str:
    with pytest.raises(NFBuildError, match=match) as e:
        compile_nf(source, name="hostile")
    message = str(e.value) + e.value.args[-1]
    assert SECRET not in message and SECRET.replace("-", "_") not in message
    return message


@pytest.mark.parametrize("spelling", ['"{p}"', "<{p}>", '"../../../../../../../..{p}"'])
def test_include_of_a_host_file_is_refused_naming_the_line(secret, spelling):
    src = "#include <serpens/nf.h>\n\n#include " + spelling.format(p=secret) + "\n"
    refused(src, r"hostile\.c:3: #include .* is not allowed")


def test_include_spelled_with_a_digraph_is_refused(secret):
    refused(f'%:include "{secret}"\n', r"hostile\.c:1: #include .* is not allowed")


def test_include_through_a_macro_is_refused(secret):
    refused(f'#define SECRET_FILE "{secret}"\n#include SECRET_FILE\n',
            r"hostile\.c:2: #include SECRET_FILE is not allowed")


@pytest.mark.parametrize("directive", ["include_next <x.h>", "import \"x.h\"", "embed \"x\"",
                                       "pragma GCC dependency \"x\""])
def test_other_directives_that_read_files_are_refused(directive):
    refused(f"#include <serpens/nf.h>\n#{directive}\n", r"hostile\.c:2: ")


def test_incbin_is_refused_by_the_text_check(secret):
    refused(f'__asm__(".incbin \\"{secret}\\"");\n', r"hostile\.c:1: .*\.incbin")


def test_incbin_spliced_from_strings_is_refused_by_landlock(secret):
    """The text check cannot see `.inc` "bin" as one word; the assembler may not read it."""
    src = f'__asm__(".section .rodata\\n.inc" "bin \\"{secret}\\"\\n.text");\n'
    message = refused(src, "failed")
    assert "Permission denied" in message or "file not found" in message


def test_dev_zero_is_refused_quickly(tmp_path):
    t0 = time.monotonic()
    refused('#include "/dev/zero"\n', "is not allowed")
    refused('__asm__(".inc" "bin \\"/dev/zero\\"");\n', "failed")  # Landlock: no /dev/zero
    assert time.monotonic() - t0 < 10


def test_output_size_is_limited():
    """A 1 GiB object would be written: the file size limit stops the assembler."""
    src = "char huge[1u << 30] = {1};\n"
    t0 = time.monotonic()
    refused(src, "failed")
    assert time.monotonic() - t0 < 30


def test_a_normal_nf_still_builds_and_bad_syntax_names_its_line():
    assert compile_nf(nf_source("pass.c"), name="pass")[:4] == b"\x7fELF"
    message = refused(nf_source("bad_syntax.c"), r"bad\.c|hostile\.c:\d+:\d+: error")
    assert "withheld" not in message


def test_check_source_allows_the_abi_and_freestanding_headers():
    builder.check_source(b"#include <serpens/nf.h>\n#include <stdint.h>\n"
                         b"#  include <wmmintrin.h>\n/* #include </etc/passwd> */\n")


def test_has_include_is_refused_it_would_tell_which_host_files_exist():
    from serpens.runtime_cy.builder import NFBuildError, check_source
    src = b'#include <serpens/nf.h>\n#if __has_include("/etc/shadow")\n#error present\n#endif\n'
    with pytest.raises(NFBuildError, match=r"nf.c:2: __has_include"):
        check_source(src)
