"""Opus's own lines (opus_paas/output.py) and the buildpack's share one style."""

from opus_buildpack import output as buildpack_output

from opus_paas import output


def test_opus_and_the_buildpack_print_the_same_three_prefixes() -> None:
    assert (output.STEP, output.DETAIL, output.ALERT) == (
        buildpack_output.STEP, buildpack_output.DETAIL, buildpack_output.ALERT)
    assert output.step("Building") == "-----> Building"
    assert output.detail("x") == "       x"
    assert output.alert("x") == " !     x"
