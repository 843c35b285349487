//! The classification extension: an output's best `k` elements of each
//! batch item as strings, best first (ties: the lower index first), the
//! same for both model kinds: `"score:index:label"` where the model has
//! labels (the classifier), `"value:index"` where it has none (a tensor
//! model's output).

/// The best `k` of one batch item's `values`, as the extension writes them.
pub fn top_k(values: &[f64], k: usize, labels: Option<&[String]>) -> Vec<String> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| match labels {
            Some(labels) => format!("{}:{i}:{}", values[i], labels.get(i).map_or("", String::as_str)),
            None => format!("{}:{i}", values[i]),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_first_with_labels_and_without() {
        let labels: Vec<String> = ["zero", "one", "two"].map(String::from).to_vec();
        assert_eq!(top_k(&[0.25, 0.125, 0.75], 2, Some(&labels)), vec!["0.75:2:two", "0.25:0:zero"]);
        assert_eq!(top_k(&[0.25, 0.125, 0.75], 2, None), vec!["0.75:2", "0.25:0"]);
        // Ties go to the lower index; more than there are is all of them.
        assert_eq!(top_k(&[0.5, 0.5, 0.0], 5, None), vec!["0.5:0", "0.5:1", "0:2"]);
    }
}
