//! Intrusive doubly-linked lists over block indices: O(1) push to the back, pop from the front and
//! removal from the middle, with no allocation after construction.
//!
//! The pool keeps two lists over the same nodes: free blocks (no cached content) and cached blocks
//! in least-recently-used order. A block is in at most one list at a time.

/// Which list a node is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum List {
    Free = 0,
    Cached = 1,
}

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Node {
    prev: u32,
    next: u32,
    list: Option<List>,
}

pub(crate) struct BlockLists {
    nodes: Vec<Node>,
    heads: [u32; 2],
    tails: [u32; 2],
    lens: [usize; 2],
}

impl BlockLists {
    /// `n` nodes, none on a list.
    pub(crate) fn new(n: usize) -> Self {
        assert!(n < NIL as usize, "too many blocks: {n}");
        let nodes = vec![Node { prev: NIL, next: NIL, list: None }; n];
        BlockLists { nodes, heads: [NIL; 2], tails: [NIL; 2], lens: [0; 2] }
    }

    pub(crate) fn len(&self, list: List) -> usize {
        self.lens[list as usize]
    }

    pub(crate) fn list_of(&self, i: u32) -> Option<List> {
        self.nodes[i as usize].list
    }

    pub(crate) fn push_back(&mut self, list: List, i: u32) {
        assert!(self.nodes[i as usize].list.is_none(), "block {i} is already on a list");
        let l = list as usize;
        let tail = self.tails[l];
        self.nodes[i as usize] = Node { prev: tail, next: NIL, list: Some(list) };
        match tail {
            NIL => self.heads[l] = i,
            t => self.nodes[t as usize].next = i,
        }
        self.tails[l] = i;
        self.lens[l] += 1;
    }

    pub(crate) fn pop_front(&mut self, list: List) -> Option<u32> {
        let head = self.heads[list as usize];
        if head == NIL {
            return None;
        }
        self.remove(head);
        Some(head)
    }

    /// Takes `i` off whichever list holds it.
    pub(crate) fn remove(&mut self, i: u32) {
        let Node { prev, next, list } = self.nodes[i as usize];
        let l = list.unwrap_or_else(|| panic!("block {i} is on no list")) as usize;
        match prev {
            NIL => self.heads[l] = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.tails[l] = prev,
            n => self.nodes[n as usize].prev = prev,
        }
        self.nodes[i as usize] = Node { prev: NIL, next: NIL, list: None };
        self.lens[l] -= 1;
    }

    /// The list front to back (for tests and invariant checks: O(n)).
    pub(crate) fn iter(&self, list: List) -> impl Iterator<Item = u32> + '_ {
        let mut cur = self.heads[list as usize];
        std::iter::from_fn(move || {
            let i = cur;
            (i != NIL).then(|| {
                cur = self.nodes[i as usize].next;
                i
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_order_and_removal_from_the_middle() {
        let mut lists = BlockLists::new(5);
        for i in 0..5 {
            lists.push_back(List::Free, i);
        }
        lists.remove(2);
        lists.remove(0);
        lists.remove(4);
        assert_eq!(lists.iter(List::Free).collect::<Vec<_>>(), vec![1, 3]);
        lists.push_back(List::Cached, 2);
        assert_eq!(lists.pop_front(List::Free), Some(1));
        assert_eq!(lists.pop_front(List::Free), Some(3));
        assert_eq!(lists.pop_front(List::Free), None);
        assert_eq!((lists.len(List::Free), lists.len(List::Cached)), (0, 1));
        assert_eq!(lists.list_of(2), Some(List::Cached));
    }
}
