fn main() { println!("xtask: todo"); }
