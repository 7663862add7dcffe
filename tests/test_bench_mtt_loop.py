"""bench_mtt_loop's convolution census reads an optimized HLO module's dim_labels (no timing asserted)."""

from benchmarks.bench_mtt_loop import conv_orders

HLO = """
  %conv.1 = f32[10,32,32,128]{3,2,1,0} convolution(%p0, %p1), dim_labels=b01f_01io->b01f, metadata={}
  %conv.2 = f32[3,3,128,128]{3,2,1,0} convolution(%a, %b), window={size=8x8}, dim_labels=f01b_i01o->01bf
  ROOT %conv.3 = f32[10,8,8,128]{3,2,1,0} convolution(%c, %d), window={size=3x3}, dim_labels=b01f_01io->b01f
  %fusion = f32[10]{0} fusion(%conv.1), kind=kLoop, calls=%fused_computation
"""


def test_convolutions_are_counted_by_dimension_order():
    assert conv_orders(HLO) == {"b01f_01io->b01f": 2, "f01b_i01o->01bf": 1}
    assert conv_orders("%add = f32[2]{0} add(%a, %b)") == {}
