//! Reconvergence points: the immediate post-dominator of every conditional branch, on the
//! basic-block graph (Cooper, Harvey & Kennedy's iterative dominator algorithm run on the
//! reversed graph from a virtual exit node).

use super::ir::{Inst, Op};

/// Fills `reconverge` of every `Bra` with the first instruction of the immediate
/// post-dominator of its block (`u32::MAX` when that is the kernel's exit).
pub fn set_reconvergence(insts: &mut [Inst]) {
    let n = insts.len();
    // Block leaders: entry, branch targets, instructions after a branch or exit.
    let mut leader = vec![false; n + 1];
    leader[0] = true;
    leader[n] = true;
    for (i, inst) in insts.iter().enumerate() {
        match inst.op {
            Op::Bra { target, .. } => {
                leader[target as usize] = true;
                leader[i + 1] = true;
            }
            Op::Exit => leader[i + 1] = true,
            _ => {}
        }
    }
    let starts: Vec<usize> = (0..n).filter(|&i| leader[i]).collect();
    let mut block_of = vec![0usize; n];
    for (b, &s) in starts.iter().enumerate() {
        let end = starts.get(b + 1).copied().unwrap_or(n);
        block_of[s..end].fill(b);
    }
    let nb = starts.len();
    let exit = nb;
    // Successors of each block; `exit` is the virtual exit node.
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); nb + 1];
    for (b, out) in succ.iter_mut().enumerate().take(nb) {
        let last = starts.get(b + 1).copied().unwrap_or(n) - 1;
        let inst = &insts[last];
        let next = if last + 1 < n { block_of[last + 1] } else { exit };
        match inst.op {
            Op::Bra { target, .. } => {
                out.push(block_of[target as usize]);
                if inst.guard.is_some() {
                    out.push(next);
                }
            }
            Op::Exit => {
                out.push(exit);
                if inst.guard.is_some() {
                    out.push(next);
                }
            }
            _ => out.push(next),
        }
    }
    let mut pred: Vec<Vec<usize>> = vec![Vec::new(); nb + 1];
    for (b, ss) in succ.iter().enumerate() {
        for &s in ss {
            pred[s].push(b);
        }
    }
    // Postorder of the reversed graph from `exit` (iterative DFS).
    const UNSEEN: usize = usize::MAX;
    let mut po_num = vec![UNSEEN; nb + 1];
    let mut order = Vec::with_capacity(nb + 1);
    let mut visited = vec![false; nb + 1];
    let mut stack = vec![(exit, 0usize)];
    visited[exit] = true;
    while let Some(top) = stack.last_mut() {
        let (node, i) = *top;
        if let Some(&p) = pred[node].get(i) {
            top.1 += 1;
            if !visited[p] {
                visited[p] = true;
                stack.push((p, 0));
            }
        } else {
            po_num[node] = order.len();
            order.push(node);
            stack.pop();
        }
    }
    let mut ipdom = vec![UNSEEN; nb + 1];
    ipdom[exit] = exit;
    let intersect = |ipdom: &[usize], mut a: usize, mut b: usize| {
        while a != b {
            while po_num[a] < po_num[b] {
                a = ipdom[a];
            }
            while po_num[b] < po_num[a] {
                b = ipdom[b];
            }
        }
        a
    };
    let mut changed = true;
    while changed {
        changed = false;
        for &node in order.iter().rev().skip(1) {
            let mut new = UNSEEN;
            for &s in &succ[node] {
                if ipdom[s] == UNSEEN {
                    continue;
                }
                new = if new == UNSEEN { s } else { intersect(&ipdom, s, new) };
            }
            if new != UNSEEN && ipdom[node] != new {
                ipdom[node] = new;
                changed = true;
            }
        }
    }
    for (i, inst) in insts.iter_mut().enumerate() {
        if let Op::Bra { reconverge, .. } = &mut inst.op {
            let pd = ipdom[block_of[i]];
            // Blocks that never reach the exit (and the exit itself) reconverge only there.
            *reconverge = if pd == UNSEEN || pd == exit { u32::MAX } else { starts[pd] as u32 };
        }
    }
}
