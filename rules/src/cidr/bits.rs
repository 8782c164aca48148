//! Addresses as plain unsigned integers, so one implementation of the range
//! arithmetic serves IPv4 (`u32`) and IPv6 (`u128`).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// An address family seen as an unsigned integer of `BITS` bits.
pub(crate) trait Bits: Copy + Ord + std::fmt::Debug {
    /// The prefix type of this family.
    type Net: Copy;
    /// Address width.
    const BITS: u32;
    /// The lowest address.
    const ZERO: Self;

    /// `self + 1`, or `None` past the highest address.
    fn checked_succ(self) -> Option<Self>;
    /// `self - 1`, or `None` below the lowest address.
    fn checked_pred(self) -> Option<Self>;
    /// `self - other`, where `other <= self`.
    fn minus(self, other: Self) -> Self;
    /// `self + 2^bits - 1`, the last address of an aligned block of `2^bits`.
    fn block_end(self, bits: u32) -> Self;
    /// Number of trailing zero bits (`BITS` for zero).
    fn trailing_zeros(self) -> u32;
    /// Number of leading zero bits (`BITS` for zero).
    fn leading_zeros(self) -> u32;
    /// The bits above `shift`, which must leave at most 32 of them.
    fn top_bits(self, shift: u32) -> u32;
    /// First and last address of a prefix.
    fn range_of(net: &Self::Net) -> (Self, Self);
    /// The prefix starting at `self` with the given length.
    fn net(self, prefix_len: u32) -> Self::Net;
}

impl Bits for u32 {
    type Net = Ipv4Net;
    const BITS: u32 = 32;
    const ZERO: Self = 0;

    fn checked_succ(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn checked_pred(self) -> Option<Self> {
        self.checked_sub(1)
    }
    fn minus(self, other: Self) -> Self {
        self - other
    }
    fn block_end(self, bits: u32) -> Self {
        self | u32::MAX.checked_shr(Self::BITS - bits).unwrap_or(0)
    }
    fn trailing_zeros(self) -> u32 {
        u32::trailing_zeros(self)
    }
    fn leading_zeros(self) -> u32 {
        u32::leading_zeros(self)
    }
    fn top_bits(self, shift: u32) -> u32 {
        self >> shift
    }
    fn range_of(net: &Ipv4Net) -> (Self, Self) {
        (net.network().to_bits(), net.broadcast().to_bits())
    }
    fn net(self, prefix_len: u32) -> Ipv4Net {
        // prefix_len <= 32 by construction of every caller.
        Ipv4Net::new_assert(Ipv4Addr::from_bits(self), prefix_len as u8)
    }
}

impl Bits for u128 {
    type Net = Ipv6Net;
    const BITS: u32 = 128;
    const ZERO: Self = 0;

    fn checked_succ(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn checked_pred(self) -> Option<Self> {
        self.checked_sub(1)
    }
    fn minus(self, other: Self) -> Self {
        self - other
    }
    fn block_end(self, bits: u32) -> Self {
        self | u128::MAX.checked_shr(Self::BITS - bits).unwrap_or(0)
    }
    fn trailing_zeros(self) -> u32 {
        u128::trailing_zeros(self)
    }
    fn leading_zeros(self) -> u32 {
        u128::leading_zeros(self)
    }
    fn top_bits(self, shift: u32) -> u32 {
        (self >> shift) as u32
    }
    fn range_of(net: &Ipv6Net) -> (Self, Self) {
        (net.network().to_bits(), net.broadcast().to_bits())
    }
    fn net(self, prefix_len: u32) -> Ipv6Net {
        // prefix_len <= 128 by construction of every caller.
        Ipv6Net::new_assert(Ipv6Addr::from_bits(self), prefix_len as u8)
    }
}
