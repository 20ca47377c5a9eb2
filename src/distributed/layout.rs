//! The sharded layout: every variable at an aligned offset of one flattened parameter space, the space
//! cut into `world` equal shards of whole vec4s, and each rank's part of a variable as at most three
//! pieces (a partial first row, whole rows, a partial last row) so that sparse rows map onto pieces.

/// One variable in the flattened parameter space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatVar {
    /// The variable's name.
    pub name: String,
    /// Its shape (`[]`: a scalar).
    pub shape: Vec<usize>,
    /// First element in the flattened space (a multiple of the alignment).
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
    /// Elements per row along axis 0 (`prod(shape[1..])`; 1 for scalars and vectors).
    pub row_len: usize,
}

/// A contiguous part of one variable held by one rank, a variable of that rank's shard optimizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The full variable's index.
    pub var: usize,
    /// First element of the piece within the variable.
    pub start: usize,
    /// Number of elements.
    pub len: usize,
    /// The piece's shape in the shard optimizer (whole rows keep the variable's trailing dimensions;
    /// a partial row is `[1, len]`; a whole scalar stays `[]`).
    pub shape: Vec<usize>,
    /// The variable's first row that the piece holds (a part of).
    pub first_row: usize,
    /// Elements per row of the piece (the variable's row length, or `len` for a partial row).
    pub row_len: usize,
}

impl Piece {
    /// First element of the piece in the flattened space.
    pub fn flat_start(&self, vars: &[FlatVar]) -> usize {
        vars[self.var].offset + self.start
    }

    /// Number of rows of the piece.
    pub fn rows(&self) -> usize {
        self.len / self.row_len.max(1)
    }
}

/// The flattened, padded parameter space and its cut into shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLayout {
    /// The variables, in the order they were given.
    pub vars: Vec<FlatVar>,
    /// Number of ranks.
    pub world: usize,
    /// Elements per shard (a multiple of 4): rank `r` holds `[r * shard, (r + 1) * shard)`.
    pub shard: usize,
    /// Elements of the space that hold variables or their padding (`<= world * shard`).
    pub used: usize,
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

impl ShardLayout {
    /// Places `vars` (name, shape) one after another, each starting on a multiple of `align` elements
    /// (at least 4: whole vec4s), and cuts the space into `world` shards of whole vec4s.
    pub fn new(vars: &[(String, Vec<usize>)], world: usize, align: usize) -> ShardLayout {
        let align = round_up(align.max(4), 4);
        let mut at = 0;
        let vars: Vec<FlatVar> = vars
            .iter()
            .map(|(name, shape)| {
                let len: usize = shape.iter().product();
                let row_len = if shape.len() <= 1 {
                    1
                } else {
                    shape[1..].iter().product()
                };
                let v = FlatVar {
                    name: name.clone(),
                    shape: shape.clone(),
                    offset: at,
                    len,
                    row_len,
                };
                at = round_up(at + len, align);
                v
            })
            .collect();
        let world = world.max(1);
        let shard = round_up(at.div_ceil(world).max(1), 4);
        ShardLayout {
            vars,
            world,
            shard,
            used: at,
        }
    }

    /// Elements of the whole space (`world * shard`).
    pub fn total(&self) -> usize {
        self.world * self.shard
    }

    /// The flattened range rank `rank` holds.
    pub fn range(&self, rank: usize) -> std::ops::Range<usize> {
        rank * self.shard..(rank + 1) * self.shard
    }

    /// The ranks whose shards hold part of `flat` (a flattened range).
    pub fn owners(&self, flat: std::ops::Range<usize>) -> std::ops::Range<usize> {
        if flat.is_empty() {
            return 0..0;
        }
        flat.start / self.shard..(flat.end - 1) / self.shard + 1
    }

    /// The pieces rank `rank` holds, in flattened order.
    pub fn pieces(&self, rank: usize) -> Vec<Piece> {
        let r = self.range(rank);
        let mut out = Vec::new();
        for (i, v) in self.vars.iter().enumerate() {
            let a = r.start.max(v.offset);
            let b = r.end.min(v.offset + v.len);
            if a >= b {
                continue;
            }
            let (a, b) = (a - v.offset, b - v.offset);
            let l = v.row_len;
            if v.shape.is_empty() {
                out.push(piece(i, a, b, Vec::new(), 0, 1));
                continue;
            }
            let (first_full, last_full) = (a.div_ceil(l), b / l);
            if first_full > last_full {
                // Inside one row.
                out.push(piece(i, a, b, vec![1, b - a], a / l, b - a));
                continue;
            }
            if a < first_full * l {
                let end = first_full * l;
                out.push(piece(i, a, end, vec![1, end - a], a / l, end - a));
            }
            if first_full < last_full {
                let mut shape = v.shape.clone();
                shape[0] = last_full - first_full;
                out.push(piece(
                    i,
                    first_full * l,
                    last_full * l,
                    shape,
                    first_full,
                    l,
                ));
            }
            if last_full * l < b {
                let s = last_full * l;
                out.push(piece(i, s, b, vec![1, b - s], last_full, b - s));
            }
        }
        out
    }
}

fn piece(
    var: usize,
    start: usize,
    end: usize,
    shape: Vec<usize>,
    first_row: usize,
    row_len: usize,
) -> Piece {
    Piece {
        var,
        start,
        len: end - start,
        shape,
        first_row,
        row_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(String, Vec<usize>)> {
        vec![
            ("s".into(), vec![]),
            ("v".into(), vec![7]),
            ("m".into(), vec![5, 3]),
            ("t".into(), vec![2, 2, 3]),
        ]
    }

    #[test]
    fn every_element_is_held_once_by_whole_pieces() {
        for world in 1..=5 {
            let l = ShardLayout::new(&vars(), world, 4);
            assert_eq!(l.shard % 4, 0);
            assert!(l.total() >= l.used);
            let mut seen: Vec<Vec<u32>> = l.vars.iter().map(|v| vec![0; v.len]).collect();
            for r in 0..world {
                for p in l.pieces(r) {
                    assert_eq!(p.len, p.shape.iter().product::<usize>());
                    assert_eq!(p.len % p.row_len, 0);
                    let flat = p.flat_start(&l.vars);
                    assert!(l.range(r).contains(&flat));
                    assert!(l.range(r).contains(&(flat + p.len - 1)));
                    let v = &l.vars[p.var];
                    // Rows of the piece are rows (or one part of a row) of the variable.
                    assert_eq!(p.first_row, p.start / v.row_len);
                    if p.row_len != v.row_len {
                        assert_eq!(p.rows(), 1);
                        assert_eq!((p.start + p.len - 1) / v.row_len, p.first_row);
                    } else {
                        assert_eq!(p.start % v.row_len, 0);
                    }
                    for e in &mut seen[p.var][p.start..p.start + p.len] {
                        *e += 1;
                    }
                }
            }
            assert!(seen.iter().flatten().all(|&c| c == 1), "world {world}");
        }
    }

    #[test]
    fn offsets_are_aligned_and_shards_equal() {
        let l = ShardLayout::new(&vars(), 3, 64);
        assert_eq!(
            l.vars.iter().map(|v| v.offset).collect::<Vec<_>>(),
            [0, 64, 128, 192]
        );
        assert_eq!(l.used, 256);
        assert_eq!(l.shard, 88);
        assert_eq!(l.owners(60..70), 0..1);
        assert_eq!(l.owners(80..100), 0..2);
        assert_eq!(l.owners(5..5), 0..0);
    }
}
