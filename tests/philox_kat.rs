//! Philox4x32-10 against Random123's known-answer vectors
//! (`shared/testdata/philox4x32_10_kat.txt`).
use candle_targeted_dropout::philox::{philox4x32_10, Bernoulli};
use candle_targeted_dropout::reference;

#[test]
fn known_answers() {
    let kat: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        (
            [0, 0, 0, 0],
            [0, 0],
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
        ),
        (
            [0xffffffff; 4],
            [0xffffffff; 2],
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
        ),
        (
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0],
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
        ),
    ];
    for (ctr, key, want) in kat {
        assert_eq!(
            philox4x32_10(ctr, key),
            want,
            "counter {ctr:x?} key {key:x?}"
        );
        // The oracle's own Philox too.
        assert_eq!(
            reference::philox4x32_10(ctr, key),
            want,
            "oracle, counter {ctr:x?}"
        );
    }
}

#[test]
fn draw_layout_follows_the_contract() {
    // Element e uses counter [e/4 as 64 bits, offset as 64 bits], key = seed, word e % 4.
    let seed = 0x299f31d0_a4093822u64;
    let offset = 0x03707344_13198a2eu64;
    let b = Bernoulli::new(seed, offset, 0.5);
    for e in [0u64, 1, 2, 3, 4, 4 * 0x1_0000_0001 + 3, u64::MAX] {
        let c = e / 4;
        let block = philox4x32_10(
            [
                c as u32,
                (c >> 32) as u32,
                offset as u32,
                (offset >> 32) as u32,
            ],
            [seed as u32, (seed >> 32) as u32],
        );
        assert_eq!(b.draw(e), block[(e % 4) as usize], "e = {e}");
        assert_eq!(b.drops(e), (b.draw(e) >> 8) < (1 << 23), "e = {e}");
    }
}
